using System.Buffers;
using System.Net.Sockets;
using Tmds.Linux;
using Weft.Hbone;

namespace Weft.Proxy;

/// <summary>
/// Copies bytes both ways between a client socket and its upstream until both directions end.
/// <code>
///   client ──receive──► buffer ──send──► upstream socket     (SocketRelay: socket to socket)
///   client ◄──send───── buffer ◄─receive─ upstream socket
///
///   client ──receive──► buffer ──DATA frames──► tunnel       (StreamRelay: a tunnel stream)
///   client ◄──send───────────────────────────── tunnel       (straight from the frame; a pipe only while the client lags)
/// </code>
/// A FIN on one side becomes a shutdown(SHUT_WR) (or END_STREAM) on the other once everything before
/// it was sent: half-close is carried across. A reset on one side becomes a reset on the other.
/// Socket to socket needs no pipe: the kernel's socket buffers already decouple the two sides, and a
/// pipe per direction cost more memory per idle connection than the 4 KiB budget allows (see
/// docs/benchmark.md). Idle sockets hold no buffer: a direction waits with a zero-byte read and rents
/// a buffer only once data is there.
/// </summary>
internal sealed class SocketRelay : IRelay
{
    private readonly Socket _a;
    private readonly Socket _b;
    private readonly IRelayObserver _observer;

    public SocketRelay(Socket a, Socket b, IRelayObserver observer)
    {
        _a = a;
        _b = b;
        _observer = observer;
    }

    /// <summary>Runs until both directions finish; never throws for peer behaviour.</summary>
    public Task RunAsync() => Task.WhenAll(
        RelayPumps.SocketToSocketAsync(_a, _b, _observer, fromA: true),
        RelayPumps.SocketToSocketAsync(_b, _a, _observer, fromA: false));

    /// <summary>Ends both sides at once with a reset (idle timeout, agent shutdown, policy).</summary>
    public void Abort()
    {
        RelayPumps.Reset(_a);
        RelayPumps.Reset(_b);
    }
}

/// <summary>The socket-to-socket loop, and the immediate send and receive (send(2) and recv(2) without waiting) that every relay uses.</summary>
internal static class RelayPumps
{
    /// <summary>Bulk transfers move this much per receive/send pair.</summary>
    public const int CopyBufferSize = 64 * 1024;

    /// <summary>
    /// Receives from <paramref name="source"/> and sends to <paramref name="destination"/> until end of
    /// stream (then shutdown(SHUT_WR) on the destination) or a reset (then both are reset).
    /// </summary>
    public static async Task SocketToSocketAsync(Socket source, Socket destination, IRelayObserver observer, bool fromA)
    {
        byte[]? buffer = null;
        try
        {
            while (true)
            {
                if (buffer is null)
                {
                    // Wait for data without holding a buffer.
                    await source.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None).ConfigureAwait(false);
                    buffer = ArrayPool<byte>.Shared.Rent(CopyBufferSize);
                }

                var read = await source.ReceiveAsync(buffer, SocketFlags.None).ConfigureAwait(false);
                if (read == 0)
                {
                    break;
                }

                observer.OnBytes(fromA, read);

                // Most sends find room in the socket buffer: they go out at once, and only the rest waits. A socket
                // never sent to asynchronously holds no send state (.NET caches one per socket on first use).
                var sent = SendNow(destination, buffer.AsSpan(0, read));
                if (sent < read)
                {
                    // On a stream socket SendAsync completes only when every byte is queued.
                    await destination.SendAsync(buffer.AsMemory(sent, read - sent), SocketFlags.None).ConfigureAwait(false);
                }

                if (read < buffer.Length)
                {
                    // The source is drained for now: go idle without a buffer.
                    ArrayPool<byte>.Shared.Return(buffer);
                    buffer = null;
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // One side reset, or we aborted: both sides must see a reset, not a clean end.
            Reset(source);
            Reset(destination);
            return;
        }
        finally
        {
            if (buffer is not null)
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }

        try
        {
            destination.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    /// <summary>
    /// send(2) with MSG_DONTWAIT: queues what fits in <paramref name="socket"/>'s buffer now and returns how many
    /// bytes that was (0 when it is full). Socket.Send on a non-blocking socket cannot do this: it returns 0 with
    /// WouldBlock even when it queued part of the bytes. Throws <see cref="SocketException"/> when the peer is gone,
    /// <see cref="ObjectDisposedException"/> when the socket was closed.
    /// </summary>
    public static unsafe int SendNow(Socket socket, ReadOnlySpan<byte> data)
    {
        fixed (byte* bytes = data)
        {
            return Math.Max(0, Now(socket, bytes, data.Length, send: true));
        }
    }

    /// <summary>
    /// recv(2) with MSG_DONTWAIT: what <paramref name="socket"/> has now, into <paramref name="buffer"/>. Returns the
    /// count, 0 at end of stream, -1 when nothing is there yet. Throws <see cref="SocketException"/> when the peer
    /// reset, <see cref="ObjectDisposedException"/> when the socket was closed.
    /// </summary>
    public static unsafe int ReceiveNow(Socket socket, Span<byte> buffer)
    {
        fixed (byte* bytes = buffer)
        {
            return Now(socket, bytes, buffer.Length, send: false);
        }
    }

    /// <summary>send(2) or recv(2) without waiting, the descriptor held meanwhile: the count, or -1 when the socket would block.</summary>
    private static unsafe int Now(Socket socket, byte* bytes, int length, bool send)
    {
        var handle = socket.SafeHandle;
        var added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            var fd = (int)handle.DangerousGetHandle();
            while (true)
            {
                var count = send
                    ? (long)LibC.send(fd, bytes, length, LibC.MSG_DONTWAIT | LibC.MSG_NOSIGNAL)
                    : (long)LibC.recv(fd, bytes, length, LibC.MSG_DONTWAIT);
                if (count >= 0)
                {
                    return (int)count;
                }

                var errno = LibC.errno;
                if (errno == LibC.EINTR)
                {
                    continue;
                }

                if (errno == LibC.EAGAIN)
                {
                    return -1;
                }

                throw ErrorOf(errno);
            }
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    private static SocketException ErrorOf(int errno) =>
        new((int)(errno == LibC.ECONNRESET ? SocketError.ConnectionReset
            : errno == LibC.EPIPE ? SocketError.Shutdown
            : errno == LibC.ETIMEDOUT ? SocketError.TimedOut : SocketError.SocketError));

    /// <summary>Closes with SO_LINGER 0, so the peer sees RST rather than FIN.</summary>
    public static void Reset(Socket socket)
    {
        try
        {
            socket.LingerState = new LingerOption(true, 0);
        }
        catch (SocketException)
        {
        }
        catch (ObjectDisposedException)
        {
        }

        socket.Dispose();
    }
}

/// <summary>Told of every chunk that crosses a relay, from the receiving loop (no allocation).</summary>
internal interface IRelayObserver
{
    void OnBytes(bool fromA, int count);
}
