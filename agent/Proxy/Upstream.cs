using System.Net;
using System.Net.Sockets;
using Weft.Capture;

namespace Weft.Proxy;

/// <summary>Sockets the agent opens on a pod's behalf: made inside the pod's netns, marked so capture skips them.</summary>
internal static class Upstream
{
    private const int SolSocket = 1;
    private const int SoMark = 36;

    public static Socket Create(string netnsPath, AddressFamily family, uint mark)
    {
        var socket = NetNamespace.Run(netnsPath, () => new Socket(family, SocketType.Stream, ProtocolType.Tcp));
        try
        {
            socket.SetRawSocketOption(SolSocket, SoMark, BitConverter.GetBytes(mark));
            socket.NoDelay = true;
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Connects from inside the pod, with the connect timeout; a timeout surfaces as SocketError.TimedOut.</summary>
    public static async Task<Socket> ConnectAsync(string netnsPath, IPEndPoint destination, ProxyOptions options, CancellationToken cancellationToken = default)
    {
        var socket = Create(netnsPath, destination.AddressFamily, options.SocketMark);
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(options.ConnectTimeout);
            try
            {
                await socket.ConnectAsync(destination, timeout.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                throw new SocketException((int)SocketError.TimedOut);
            }

            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
