using System.Net.Sockets;
using Weft.Hbone;

namespace Weft.Proxy;

/// <summary>
/// Relays between a plain socket and a tunnel stream (an HBONE CONNECT stream). Toward the tunnel the
/// socket's bytes become DATA frames straight from the receive buffer (no outbound pipe, no send loop);
/// from the tunnel the stream's inbound pipe is read without a wrapper, its consumption handed back as
/// window credit. End of stream maps to END_STREAM both ways and a reset on either side resets the other.
/// An idle relay holds two pending socket reads' worth of state and the inbound pipe, no buffer.
/// </summary>
internal sealed class StreamRelay
{
    private readonly Socket _socket;
    private readonly HboneStream _stream;
    private readonly Action _resetStream;
    private readonly IRelayObserver _observer;
    private readonly bool _socketIsA;

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
    /// lost) the socket is reset at once: the pumps may be blocked on the socket (an app that does not
    /// read, or one whose half of the stream is still open) and would otherwise hold it indefinitely.
    /// </summary>
    public async Task RunAsync(CancellationToken streamAborted)
    {
        using CancellationTokenRegistration onAbort = streamAborted.UnsafeRegister(static socket => RelayPumps.Reset((Socket)socket!), _socket);
        await Task.WhenAll(
            RelayPumps.SocketToStreamAsync(_socket, _stream, _observer, fromA: _socketIsA, onReset: _resetStream),
            RelayPumps.StreamToSocketAsync(_stream, _socket, onFailure: _resetStream, _observer, fromA: !_socketIsA)).ConfigureAwait(false);
        // The pipe-to-socket loop may have ended on the tunnel's read loop (END_STREAM, reset): what follows
        // (access log, flow table, closing) belongs on the thread pool, not on the connection's reader.
        await Task.Yield();
    }

    public void Abort()
    {
        _resetStream();
        RelayPumps.Reset(_socket);
    }
}
