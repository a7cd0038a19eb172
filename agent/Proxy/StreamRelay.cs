using System.Net.Sockets;
using Weft.Hbone;

namespace Weft.Proxy;

/// <summary>
/// Relays between a plain socket and a tunnel stream (an HBONE CONNECT stream). Toward the tunnel the
/// socket's bytes become DATA frames straight from the receive buffer (no outbound pipe, no send loop).
/// From the tunnel each DATA frame's payload is sent to the socket as the connection's read loop parses
/// it, without waiting (send(2) with MSG_DONTWAIT); only what the socket cannot take at once
/// waits in the stream's pipe for an asynchronous send. End of stream maps to END_STREAM both ways and a
/// reset on either side resets the other.
/// <para>
/// An idle relay holds no buffer, pipe, send state or pending .NET receive: its socket waits in
/// <see cref="ReadWatch"/>, and a readiness runs one burst (<see cref="PumpAsync"/>) that reads with recv(2)
/// until the socket is empty, then re-arms. The relay is done when both directions are; nothing awaits it
/// in between, so a held connection costs the relay object and its socket, not a chain of waiting tasks.
/// </para>
/// </summary>
internal sealed class StreamRelay : IInboundSink, IRunOnWatch, IRelay
{
    // Toward the tunnel: waiting in the watch, reading a burst, or over (end of stream, reset or abort).
    private const int Idle = 0, Pumping = 1, Ended = 2;

    /// <summary>
    /// What a burst on a watch's thread moves toward the tunnel before it re-arms and lets the watch's other sockets run
    /// (the level-triggered watch fires again at once while bytes remain).
    /// </summary>
    private const int WatchTurnBytes = 256 * 1024;

    private readonly Socket _socket;
    private readonly HboneStream _stream;
    private readonly IRelayObserver _observer;
    private readonly bool _socketIsA;
    private IRelayEnd<StreamRelay>? _end;
    private WritableWait? _room;        // from the tunnel: a wait for room in a full socket, made the first time it fills
    private int _outbound = Pumping;    // until Start arms the watch
    private int _directions = 2;        // still running; the relay is done at 0
    private long _watch;

    /// <param name="socketIsA">True when the socket is the client side (its bytes count as sent).</param>
    public StreamRelay(Socket socket, HboneStream stream, IRelayObserver observer, bool socketIsA)
    {
        _socket = socket;
        _stream = stream;
        _observer = observer;
        _socketIsA = socketIsA;
        stream.SendDirectly();
    }

    /// <summary>The socket side: the app's connection (outbound) or the one to the app (inbound).</summary>
    public Socket Socket => _socket;

    public HboneStream Stream => _stream;

    public IRelayObserver Observer => _observer;

    /// <summary>Bursts toward the tunnel, and how many of them started on a watch's thread (tests).</summary>
    internal int Bursts { get; private set; }

    internal int BurstsOnWatch { get; private set; }

    /// <summary>The most one burst moved toward the tunnel on a watch's thread (tests).</summary>
    internal int LongestTurnOnWatch { get; private set; }

    /// <summary>
    /// Starts relaying; <paramref name="end"/> hears on the thread pool (not on the tunnel's read loop) once both
    /// directions have ended. When the tunnel stream is aborted (reset, or its HBONE connection lost:
    /// <see cref="IInboundSink.Aborted"/>) the socket is reset at once: the relay may be blocked on the socket (an app
    /// that does not read, or one whose half of the stream is still open) and would otherwise hold it indefinitely.
    /// </summary>
    public void Start(IRelayEnd<StreamRelay> end)
    {
        _end = end;
        _stream.DeliverTo(this);
        // The tunnel's shard: what this socket sends comes back as the tunnel's readiness, and the other way round.
        _watch = ReadWatch.Shared.Register(this, TunnelSocketStream.ShardUnder(_stream.Transport));
        Volatile.Write(ref _outbound, Idle);
        if (!ReadWatch.Shared.Arm(_socket, _watch, first: true))
        {
            // Closed already (an abort came first).
            EndOutbound(Idle);
        }
    }

    public void Abort()
    {
        _stream.Reset();
        ResetSocket();
    }

    /// <summary>Resets the socket; a direction waiting on it ends now, one in a burst ends when the burst sees the close.</summary>
    private void ResetSocket()
    {
        RelayPumps.Reset(_socket);
        Volatile.Read(ref _room)?.Dispose();
        EndOutbound(Idle);
    }

    /// <summary>Ends the direction toward the tunnel if it is in state <paramref name="from"/>; false when it was not.</summary>
    private bool EndOutbound(int from)
    {
        if (Interlocked.CompareExchange(ref _outbound, Ended, from) != from)
        {
            return false;
        }

        ReadWatch.Shared.Remove(_watch);
        DirectionDone();
        return true;
    }

    private void DirectionDone()
    {
        if (Interlocked.Decrement(ref _directions) == 0)
        {
            // Nothing sends to the socket any more: free its place in the writable watch before its owner closes it.
            Volatile.Read(ref _room)?.Dispose();
            ThreadPool.UnsafeQueueUserWorkItem(static relay => relay._end!.RelayEnded(relay), this, preferLocal: false);
        }
    }

    void IThreadPoolWorkItem.Execute()
    {
        if (Interlocked.CompareExchange(ref _outbound, Pumping, Idle) == Idle)
        {
            _ = PumpAsync();
        }
    }

    /// <summary>
    /// One burst toward the tunnel: reads until the socket is empty (then re-arms), ends or fails. It starts on the watch
    /// thread that saw the bytes: a receive, the DATA frame, its TLS record and a send that never waits (the tunnel's
    /// socket is non-blocking, <see cref="TunnelSocketStream"/>). What must wait (the stream's flow-control window, the
    /// connection's write turn, room in the tunnel's socket) is an await, and the burst goes on on the thread pool.
    /// </summary>
    private async Task PumpAsync()
    {
        var buffer = DataBuffers.Default.Rent();
        var turn = 0;
        Bursts++;
        if (ReadWatch.OnWatchThread)
        {
            BurstsOnWatch++;
        }

        try
        {
            while (true)
            {
                // At most four record-sized DATA frames' worth: a full read is four whole TLS records in the tunnel.
                var read = RelayPumps.ReceiveNow(_socket, buffer.AsSpan(0, HboneStream.RecordAlignedSend));
                if (read < 0)
                {
                    GoIdle();
                    return;
                }

                if (read == 0)
                {
                    await _stream.EndOutputAsync().ConfigureAwait(false);
                    EndOutbound(Pumping);
                    return;
                }

                _observer.OnBytes(_socketIsA, read);
                if (ReadWatch.OnWatchThread)
                {
                    turn += read;
                    LongestTurnOnWatch = Math.Max(LongestTurnOnWatch, turn);
                }

                await _stream.SendAsync(buffer.AsMemory(0, read)).ConfigureAwait(false);
                if (read < HboneStream.RecordAlignedSend || (turn >= WatchTurnBytes && ReadWatch.OnWatchThread))
                {
                    GoIdle();
                    return;
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or HboneException)
        {
            // The socket reset or we closed it: the stream must not look cleanly ended. Or the stream was reset or
            // its tunnel lost: the stream's abort (IInboundSink.Aborted) resets the socket.
            _stream.Reset();
            EndOutbound(Pumping);
        }
        finally
        {
            DataBuffers.Default.Return(buffer);
        }
    }

    /// <summary>
    /// Back to the watch once the socket looks empty (a short read says so without another recv: the watch is
    /// level-triggered and fires at once if more is there). Idle before the re-arm, so a readiness right after it
    /// finds the relay ready to run, and an abort in between finds it idle and ends it.
    /// </summary>
    private void GoIdle()
    {
        Volatile.Write(ref _outbound, Idle);
        if (!ReadWatch.Shared.Arm(_socket, _watch) && EndOutbound(Idle))
        {
            // Closed between the read and the re-arm, before anyone ended the direction: ours to end, as a reset.
            _stream.Reset();
        }
    }

    int IInboundSink.TryTake(ReadOnlySpan<byte> data)
    {
        var sent = RelayPumps.SendNow(_socket, data);
        if (sent > 0)
        {
            _observer.OnBytes(!_socketIsA, sent);
        }

        return sent;
    }

    /// <summary>
    /// What the socket could not take at once: send(2) without waiting, and when it is full a wait in
    /// <see cref="ReadWatch.Writable"/>, not <c>Socket.SendAsync</c>, which would put the socket in .NET's socket engine
    /// for the rest of its life (its thread then wakes for every segment the app sends, though the watch reads them).
    /// </summary>
    async ValueTask IInboundSink.TakeAsync(ReadOnlyMemory<byte> data)
    {
        while (!data.IsEmpty)
        {
            var sent = RelayPumps.SendNow(_socket, data.Span);
            if (sent > 0)
            {
                _observer.OnBytes(!_socketIsA, sent);
                data = data[sent..];
                continue;
            }

            // Set before the wait arms, so a reset that closes the socket after the arm finds it and ends the wait (one
            // that closed it before makes the arm fail).
            var room = Volatile.Read(ref _room) ?? Interlocked.CompareExchange(ref _room, new WritableWait(_socket), null) ?? _room!;
            await room.WaitAsync(CancellationToken.None).ConfigureAwait(false);
        }
    }

    void IInboundSink.End(Exception? error)
    {
        if (error is null)
        {
            // The peer's END_STREAM, after everything before it was sent: half-close toward the socket.
            try
            {
                _socket.Shutdown(SocketShutdown.Send);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
            }
        }
        else
        {
            // The stream was reset or its tunnel lost: the socket's peer must see a reset, not a clean end.
            ResetSocket();
        }

        DirectionDone();
    }

    void IInboundSink.Aborted() => ResetSocket();

    void IInboundSink.Failed(Exception error)
    {
        if (error is not ObjectDisposedException)
        {
            // The socket went away: reset it and the stream.
            _stream.Reset();
            ResetSocket();
        }

        DirectionDone();
    }
}

/// <summary>Finishes a connection once its relay has ended both ways.</summary>
internal interface IRelayEnd<in TRelay>
{
    void RelayEnded(TRelay relay);
}
