using System.Net;
using System.Net.Sockets;
using Weft.Capture;

namespace Weft.Proxy;

/// <summary>
/// Sockets the agent opens on a pod's behalf: made inside the pod's netns and claimed as the agent's
/// (<see cref="AgentSockets"/>) before they connect, so capture never takes them.
/// </summary>
internal static class Upstream
{
    public static Socket Create(string netnsPath, AddressFamily family)
    {
        var socket = NetNamespace.Run(netnsPath, () => new Socket(family, SocketType.Stream, ProtocolType.Tcp));
        try
        {
            AgentSockets.Claim(socket);
            socket.NoDelay = true;
            return socket;
        }
        catch (CaptureException e)
        {
            socket.Dispose();
            // unclaimed, its connect would be captured back into the agent: fail it like a connect
            Log.Warn("proxy", $"{netnsPath}: {e.Message}");
            throw new SocketException((int)(e.Errno == 12 ? SocketError.NoBufferSpaceAvailable : SocketError.SocketError));
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
        var socket = Create(netnsPath, destination.AddressFamily);
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
