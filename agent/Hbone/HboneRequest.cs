using Weft.Hbone.Internal;

namespace Weft.Hbone;

/// <summary>
/// A CONNECT received by <see cref="HboneServer"/>: answer it once, with <see cref="AcceptAsync"/> (200,
/// the tunnel opens) or <see cref="RejectAsync"/> (any other status, the stream ends). Bytes the client
/// sends before the answer wait in the stream's input, within its window.
/// </summary>
internal sealed class HboneRequest
{
    private readonly Http2Connection _connection;
    private int _responded;
    private int _detached;
    private int _finished;

    internal HboneRequest(Http2Connection connection, HboneStream stream, string authority, IReadOnlyList<KeyValuePair<string, string>> headers)
    {
        _connection = connection;
        Stream = stream;
        Authority = authority;
        Headers = headers;
    }

    /// <summary>The :authority, for HBONE the original destination "ip:port".</summary>
    public string Authority { get; }

    /// <summary>Regular request fields (lowercase names) in arrival order, e.g. forwarded, traceparent, baggage.</summary>
    public IReadOnlyList<KeyValuePair<string, string>> Headers { get; private set; }

    public int StreamId => Stream.StreamId;

    /// <summary>Cancelled when the client resets the stream or the connection ends: stop working on its behalf (e.g. dialing the app).</summary>
    public CancellationToken Aborted => Stream.Aborted;

    internal HboneStream Stream { get; }

    internal bool Responded => Volatile.Read(ref _responded) != 0;

    /// <summary>
    /// The handler carries on after it returns (a relay that runs on its own): the server leaves the stream open and
    /// keeps counting the handler until <see cref="FinishAsync"/>. Nothing waits in between, so a held stream keeps no
    /// handler frames (about 420 bytes of each held connection in the load suite's heap dump). The header fields go
    /// too: the handler has read what it needs from them.
    /// </summary>
    internal void Detach()
    {
        Headers = [];
        Volatile.Write(ref _detached, 1);
    }

    internal bool Detached => Volatile.Read(ref _detached) != 0;

    /// <summary>What the server does when a handler returns: a 500 if unanswered, the stream closed. Once.</summary>
    internal Task FinishAsync() => _connection.FinishHandlerAsync(this);

    internal bool TryFinish() => Interlocked.Exchange(ref _finished, 1) == 0;

    /// <summary>Sends :status 200 and returns the open tunnel.</summary>
    public async Task<HboneStream> AcceptAsync()
    {
        MarkResponded();
        await _connection.SendResponseAsync(Stream, 200, endStream: false).ConfigureAwait(false);
        Stream.StartSending();
        return Stream;
    }

    /// <summary>Answers with <paramref name="status"/> (not 2xx) and ends the stream; the client's data is refused with RST_STREAM(NO_ERROR).</summary>
    public async Task RejectAsync(int status)
    {
        if (status is < 300 or > 599)
        {
            throw new ArgumentOutOfRangeException(nameof(status), "a rejection needs a 3xx, 4xx or 5xx status");
        }
        MarkResponded();
        await _connection.SendResponseAsync(Stream, status, endStream: true).ConfigureAwait(false);
        _connection.OnLocalEnd(Stream);
        // The client may still be sending; tell it to stop without calling it an error (RFC 9113 8.1).
        _connection.ResetStream(Stream, Http2ErrorCode.NoError, new HboneException($"CONNECT rejected with {status}", statusCode: status));
    }

    private void MarkResponded()
    {
        if (Interlocked.Exchange(ref _responded, 1) != 0)
        {
            throw new InvalidOperationException("the CONNECT has already been answered");
        }
    }
}
