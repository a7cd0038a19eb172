using System.Net.Sockets;
using Weft.Hbone;

namespace Weft.Proxy;

/// <summary>
/// Relays between a plain socket and a tunnel stream (an HBONE CONNECT stream). Toward the tunnel the
/// socket's bytes become DATA frames straight from the receive buffer (no outbound pipe, no send loop).
/// From the tunnel each DATA frame's payload is sent to the socket as the connection's read loop parses
/// it, without waiting (send(2) with MSG_DONTWAIT); only what the socket cannot take at once
/// waits in the stream's pipe for an asynchronous send. End of stream maps to END_STREAM both ways and a
/// reset on either side resets the other. An idle relay holds one pending zero-byte socket read and no
/// buffer, pipe or send state.
/// </summary>
internal sealed class StreamRelay : IInboundSink
{
    private readonly Socket _socket;
    private readonly HboneStream _stream;
    private readonly Action _resetStream;
    private readonly IRelayObserver _observer;
    private readonly bool _socketIsA;
    private readonly TaskCompletionSource _inboundDone = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <param name="socketIsA">True when the socket is the client side (its bytes count as sent).</param>
    public StreamRelay(Socket socket, HboneStream stream, Action resetStream, IRelayObserver observer, bool socketIsA)
    {
        _socket = socket;
        _stream = stream;
        _resetStream = resetStream;
        _observer = observer;
        _socketIsA = socketIsA;
        stream.SendDirectly();
    }

    /// <summary>
    /// Runs until both directions end. When the tunnel stream is aborted (reset, or its HBONE connection
    /// lost) the socket is reset at once: the relay may be blocked on the socket (an app that does not
    /// read, or one whose half of the stream is still open) and would otherwise hold it indefinitely.
    /// </summary>
    public async Task RunAsync(CancellationToken streamAborted)
    {
        using CancellationTokenRegistration onAbort = streamAborted.UnsafeRegister(static socket => RelayPumps.Reset((Socket)socket!), _socket);
        _stream.DeliverTo(this);
        await Task.WhenAll(
            RelayPumps.SocketToStreamAsync(_socket, _stream, _observer, fromA: _socketIsA, onReset: _resetStream),
            _inboundDone.Task).ConfigureAwait(false);
        // Continuations of the inbound side run on the thread pool already; the access log, flow table and
        // closing that follow belong there too, not on the connection's reader.
        await Task.Yield();
    }

    public void Abort()
    {
        _resetStream();
        RelayPumps.Reset(_socket);
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

    async ValueTask IInboundSink.TakeAsync(ReadOnlyMemory<byte> data)
    {
        // On a stream socket SendAsync completes only when every byte is queued.
        await _socket.SendAsync(data, SocketFlags.None).ConfigureAwait(false);
        _observer.OnBytes(!_socketIsA, data.Length);
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
            RelayPumps.Reset(_socket);
        }

        _inboundDone.TrySetResult();
    }

    void IInboundSink.Failed(Exception error)
    {
        if (error is not ObjectDisposedException)
        {
            // The socket went away: reset it and the stream.
            RelayPumps.Reset(_socket);
            _resetStream();
        }

        _inboundDone.TrySetResult();
    }
}
