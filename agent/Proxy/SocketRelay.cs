using System.Net.Sockets;
using Tmds.Linux;
using Weft.Hbone;

namespace Weft.Proxy;

/// <summary>
/// Copies bytes both ways between a client socket and its upstream until both directions end.
/// <code>
///   client ──splice──► pipe ──splice──► upstream socket      (SocketRelay: socket to socket, in the kernel)
///   client ◄─splice─── pipe ◄─splice─── upstream socket
///
///   client ──receive──► buffer ──DATA frames──► tunnel       (StreamRelay: a tunnel stream)
///   client ◄──send───────────────────────────── tunnel       (straight from the frame; a pipe only while the client lags)
/// </code>
/// A FIN on one side becomes a shutdown(SHUT_WR) (or END_STREAM) on the other once everything before
/// it was sent: half-close is carried across. A reset on one side becomes a reset on the other.
/// <para>
/// An idle relay holds no buffer, pipe, send state or pending .NET receive: each socket waits in
/// <see cref="ReadWatch"/>, and a readiness runs one burst that splices the socket's bytes through a pooled
/// kernel pipe into the other socket until the first is empty (then re-arms). A burst whose destination is full
/// keeps its pipe and waits in <see cref="ReadWatch.Writable"/>. When no pipe can be had (<see cref="SplicePipes"/>)
/// a burst copies through a pooled buffer with recv(2) and send(2) instead. Nothing awaits the relay: it tells its
/// <see cref="IRelayEnd{TRelay}"/> once both directions are over.
/// </para>
/// </summary>
internal sealed class SocketRelay : IRelay
{
    private readonly Direction _fromA;
    private readonly Direction _fromB;
    private IRelayEnd<SocketRelay>? _end;
    private int _directions = 2;    // still running; the relay is done at 0

    public SocketRelay(Socket a, Socket b, IRelayObserver observer)
    {
        A = a;
        B = b;
        Observer = observer;
        _fromA = new Direction(this, a, b, fromA: true);
        _fromB = new Direction(this, b, a, fromA: false);
    }

    /// <summary>The client side: its bytes count as sent.</summary>
    public Socket A { get; }

    /// <summary>The upstream side.</summary>
    public Socket B { get; }

    public IRelayObserver Observer { get; }

    /// <summary>Of the bytes relayed so far, those that went through a pipe by splice(2) (the rest were copied through a buffer).</summary>
    public long SplicedBytes => _fromA.Spliced + _fromB.Spliced;

    /// <summary>Starts relaying; <paramref name="end"/> hears on the thread pool once both directions have ended.</summary>
    public void Start(IRelayEnd<SocketRelay> end)
    {
        _end = end;
        // splice(2) waits on a blocking socket whatever its flags say; the relay never waits in a system call.
        SplicePipes.MakeNonBlocking(A);
        SplicePipes.MakeNonBlocking(B);
        // One shard for both: the request one direction sends comes back as the other's readiness.
        var shard = ReadWatch.Shared.NextShard();
        _fromA.Start(shard);
        _fromB.Start(shard);
    }

    /// <summary>Ends both sides at once with a reset (idle timeout, agent shutdown, policy).</summary>
    public void Abort() => ResetBoth();

    /// <summary>
    /// Resets both sockets. A direction waiting in the watch ends now (a closed socket leaves the epoll set, so
    /// nothing would wake it); one in a burst ends when the burst sees the close.
    /// </summary>
    private void ResetBoth()
    {
        RelayPumps.Reset(A);
        RelayPumps.Reset(B);
        _fromA.EndIfWaiting();
        _fromB.EndIfWaiting();
    }

    private void DirectionDone()
    {
        if (Interlocked.Decrement(ref _directions) == 0)
        {
            ThreadPool.UnsafeQueueUserWorkItem(static relay => relay._end!.RelayEnded(relay), this, preferLocal: false);
        }
    }

    /// <summary>
    /// One direction. Its states: waiting in the read watch for the source (Idle), running a burst (Pumping), waiting
    /// in the write watch for room in the destination with bytes in its pipe (Blocked), or over (Ended: end of stream,
    /// reset or abort). Only the thread that moved it to Pumping touches its pipe until it leaves Pumping.
    /// </summary>
    private sealed class Direction(SocketRelay relay, Socket source, Socket destination, bool fromA) : IRunOnWatch
    {
        public const int Idle = 0, Pumping = 1, Ended = 2, Blocked = 3;

        /// <summary>A burst moves at most this much before it lets other relays run (the watch fires again at once).</summary>
        private const int BurstBytes = 1024 * 1024;

        private int _state = Pumping;   // until Start arms the watch
        private long _watch;
        private long _writeWatch = -1;  // registered in the write watch on the first full destination
        private SplicePipe? _pipe;      // held during a burst, and while Blocked
        private int _pending;           // bytes in the pipe not yet sent on
        private long _spliced;

        public long Spliced => Interlocked.Read(ref _spliced);

        public void Start(int shard)
        {
            _watch = ReadWatch.Shared.Register(this, shard);
            Volatile.Write(ref _state, Idle);
            if (!ReadWatch.Shared.Arm(source, _watch, first: true))
            {
                // Closed already: an abort, or the other direction's reset, came first. Ends this direction too.
                relay.ResetBoth();
            }
        }

        /// <summary>Ends the direction if it waits in a watch (after a reset closed its sockets nothing would wake it).</summary>
        public void EndIfWaiting()
        {
            if (!End(Idle))
            {
                End(Blocked);
            }
        }

        /// <summary>Ends the direction if it is in state <paramref name="from"/>; false when it was not.</summary>
        public bool End(int from)
        {
            if (Interlocked.CompareExchange(ref _state, Ended, from) != from)
            {
                return false;
            }

            ReadWatch.Shared.Remove(_watch);
            if (_writeWatch >= 0)
            {
                ReadWatch.Writable.Remove(_writeWatch);
            }

            if (_pipe is { } pipe)
            {
                _pipe = null;
                SplicePipes.Return(pipe, empty: _pending == 0);
            }

            relay.DirectionDone();
            return true;
        }

        void IThreadPoolWorkItem.Execute()
        {
            var state = Volatile.Read(ref _state);
            if ((state == Idle || state == Blocked) && Interlocked.CompareExchange(ref _state, Pumping, state) == state)
            {
                if (_pipe is not null || (_pipe = SplicePipes.Rent()) is not null)
                {
                    Splice();
                }
                else
                {
                    _ = CopyAsync();
                }
            }
        }

        /// <summary>
        /// One burst through the pipe: the source's pages into the pipe, the pipe into the destination, until the
        /// source is empty (back to the read watch), the destination is full (to the write watch, the bytes kept in
        /// the pipe), the stream ends, or it fails.
        /// </summary>
        private void Splice()
        {
            var pipe = _pipe!;
            try
            {
                for (var moved = 0; ;)
                {
                    if (_pending > 0)
                    {
                        var sent = SplicePipes.Splice(destination, fromSocket: false, pipe, _pending);
                        if (sent < 0)
                        {
                            WaitForRoom();
                            return;
                        }

                        _pending -= sent;
                        Interlocked.Add(ref _spliced, sent);
                        SplicePipes.Count(sent);
                        continue;
                    }

                    if (moved >= BurstBytes)
                    {
                        GoIdle();
                        return;
                    }

                    // The pipe is empty here, so -1 means the source is (not that the pipe is full).
                    var read = SplicePipes.Splice(source, fromSocket: true, pipe, SplicePipe.Capacity);
                    if (!Received(read))
                    {
                        return;
                    }

                    _pending = read;
                    moved += read;
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                Failed();
            }
        }

        /// <summary>
        /// One burst through a buffer, when no pipe can be had (the agent is short of descriptors): reads until the
        /// source is empty (then re-arms), ends or fails.
        /// </summary>
        private async Task CopyAsync()
        {
            var buffer = DataBuffers.Default.Rent();
            try
            {
                while (true)
                {
                    var read = RelayPumps.ReceiveNow(source, buffer);
                    if (!Received(read))
                    {
                        return;
                    }

                    // Most sends find room in the socket buffer: they go out at once, and only the rest waits. A socket
                    // never sent to asynchronously holds no send state (.NET caches one per socket on first use).
                    var sent = RelayPumps.SendNow(destination, buffer.AsSpan(0, read));
                    if (sent < read)
                    {
                        // On a stream socket SendAsync completes only when every byte is queued.
                        await destination.SendAsync(buffer.AsMemory(sent, read - sent), SocketFlags.None).ConfigureAwait(false);
                    }

                    if (read < buffer.Length)
                    {
                        GoIdle();
                        return;
                    }
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                Failed();
            }
            finally
            {
                DataBuffers.Default.Return(buffer);
            }
        }

        /// <summary>
        /// Takes a read of <paramref name="read"/> bytes from the source: counts them and returns true, or ends the burst
        /// and returns false when the source is empty (back to the watch) or ended (half-closed on).
        /// </summary>
        private bool Received(int read)
        {
            if (read < 0)
            {
                GoIdle();
                return false;
            }

            if (read == 0)
            {
                SourceEnded();
                return false;
            }

            relay.Observer.OnBytes(fromA, read);
            return true;
        }

        /// <summary>Everything before the source's FIN was sent: half-close toward the other side.</summary>
        private void SourceEnded()
        {
            try
            {
                destination.Shutdown(SocketShutdown.Send);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
            }

            End(Pumping);
        }

        /// <summary>
        /// One side reset, or we aborted: both sides must see a reset, not a clean end. Reset before ending, so the
        /// relay's end (which closes both sockets) cannot close them first without the reset.
        /// </summary>
        private void Failed()
        {
            relay.ResetBoth();
            End(Pumping);
        }

        /// <summary>
        /// Back to the read watch once the source looks empty, with an empty pipe handed back. Idle before the re-arm,
        /// so a readiness right after it finds the direction ready to run, and an abort in between finds it idle and
        /// ends it. The watch is level-triggered: bytes that came after the last read fire it at once.
        /// </summary>
        private void GoIdle()
        {
            if (_pipe is { } pipe)
            {
                _pipe = null;
                SplicePipes.Return(pipe, empty: true);
            }

            Volatile.Write(ref _state, Idle);
            if (!ReadWatch.Shared.Arm(source, _watch))
            {
                // Closed between the read and the re-arm: a reset, which ends this direction unless someone already did.
                relay.ResetBoth();
            }
        }

        /// <summary>The destination is full: wait in the write watch, the unsent bytes in the pipe.</summary>
        private void WaitForRoom()
        {
            var first = _writeWatch < 0;
            if (first)
            {
                _writeWatch = ReadWatch.Writable.Register(this);
            }

            Volatile.Write(ref _state, Blocked);
            if (!ReadWatch.Writable.Arm(destination, _writeWatch, first))
            {
                relay.ResetBoth();
            }
        }
    }
}

/// <summary>The immediate send and receive (send(2) and recv(2) without waiting) that every relay uses, and the reset.</summary>
internal static class RelayPumps
{
    /// <summary>Bulk transfers move this much per receive/send pair.</summary>
    public const int CopyBufferSize = DataBuffers.Size;

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
    private static unsafe int Now(Socket socket, byte* bytes, int length, bool send) =>
        Call(socket, ((nint)bytes, length), send ? &Send : &Receive);

    private static unsafe long Send(int fd, (nint Bytes, int Length) data) =>
        (long)LibC.send(fd, (void*)data.Bytes, data.Length, LibC.MSG_DONTWAIT | LibC.MSG_NOSIGNAL);

    private static unsafe long Receive(int fd, (nint Bytes, int Length) data) =>
        (long)LibC.recv(fd, (void*)data.Bytes, data.Length, LibC.MSG_DONTWAIT);

    /// <summary>
    /// Runs a non-blocking system call on <paramref name="socket"/>'s descriptor, held meanwhile so it cannot be closed
    /// and reused under the call, and tried again when a signal interrupts it. Returns what it returned, or -1 when it
    /// would block. Throws <see cref="SocketException"/> for any other error, <see cref="ObjectDisposedException"/> when the
    /// socket was closed.
    /// </summary>
    internal static unsafe int Call<TState>(Socket socket, TState state, delegate*<int, TState, long> call)
    {
        var handle = socket.SafeHandle;
        var added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            var fd = (int)handle.DangerousGetHandle();
            while (true)
            {
                var count = call(fd, state);
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
