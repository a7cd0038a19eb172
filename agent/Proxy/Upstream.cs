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

    /// <summary>
    /// Connects from inside the pod, with the connect timeout; a timeout surfaces as SocketError.TimedOut. With
    /// <paramref name="transparentFrom"/>, from that (non-local) address: see <see cref="BindTransparent"/>.
    /// </summary>
    public static async Task<Socket> ConnectAsync(string netnsPath, IPEndPoint destination, ProxyOptions options,
        CancellationToken cancellationToken = default, IPAddress? transparentFrom = null)
    {
        var socket = Create(netnsPath, destination.AddressFamily);
        try
        {
            IPEndPoint? delivery = null;
            if (transparentFrom is not null)
            {
                BindTransparent(socket, transparentFrom);
                delivery = (IPEndPoint)socket.LocalEndPoint!;
                MarkDelivery(netnsPath, delivery, destination, add: true);
            }

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
            finally
            {
                // the SYN has been looked up (or the connect failed): the entry has done its work
                if (delivery is not null)
                {
                    MarkDelivery(netnsPath, delivery, destination, add: false);
                }
            }

            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private static void MarkDelivery(string netnsPath, IPEndPoint from, IPEndPoint to, bool add)
    {
        try
        {
            AgentSockets.MarkDelivery(from, to, add);
        }
        catch (CaptureException e)
        {
            // without the entry sk_lookup would hand the SYN back to the agent: fail it like a connect
            Log.Warn("proxy", $"{netnsPath}: {e.Message}");
            if (add)
            {
                throw new SocketException((int)(e.Errno == 12 ? SocketError.NoBufferSpaceAvailable : SocketError.SocketError));
            }
        }
    }

    private const int SolIp = 0;
    private const int IpTransparent = 19;
    private const int SolIpv6 = 41;
    private const int Ipv6Transparent = 75;
    private const int SolSocket = 1;
    private const int SoMark = 36;

    /// <summary>
    /// Binds to the client's address, port 0, as IP_TRANSPARENT allows for an address that is not the pod's, and marks
    /// the socket so the app's replies come back to it (<see cref="DeliveryReturnPath"/>). Port 0, not the client's
    /// port: on the plaintext path the agent's accepted socket already holds the client's exact 4-tuple in this
    /// namespace, and bind() picks odd ports where connect() picks even ones, so the delivering socket does not take the
    /// tuple of a client's later connection either (docs/capture.md).
    /// </summary>
    private static void BindTransparent(Socket socket, IPAddress from)
    {
        Span<byte> on = stackalloc byte[sizeof(int)];
        BitConverter.TryWriteBytes(on, 1);
        if (from.AddressFamily == AddressFamily.InterNetworkV6)
        {
            socket.SetRawSocketOption(SolIpv6, Ipv6Transparent, on);
        }
        else
        {
            socket.SetRawSocketOption(SolIp, IpTransparent, on);
        }

        Span<byte> mark = stackalloc byte[sizeof(uint)];
        BitConverter.TryWriteBytes(mark, DeliveryReturnPath.Mark);
        socket.SetRawSocketOption(SolSocket, SoMark, mark);
        socket.Bind(new IPEndPoint(from, 0));
    }
}
