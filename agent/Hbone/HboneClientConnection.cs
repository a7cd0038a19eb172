using Weft.Hbone.Internal;

namespace Weft.Hbone;

/// <summary>
/// The client side of one HBONE connection: many CONNECT streams over one transport. A pool keeps one
/// per (source pod, destination identity, destination address) and opens another when
/// <see cref="CanOpenStream"/> is false.
/// </summary>
internal sealed class HboneClientConnection : IAsyncDisposable
{
    private readonly Http2Connection _connection;
    private readonly Task _run;

    private HboneClientConnection(Http2Connection connection)
    {
        _connection = connection;
        _run = connection.RunAsync();
    }

    /// <summary>
    /// Sends the preface, our SETTINGS and the connection WINDOW_UPDATE, then starts reading. Does not
    /// wait for the server's SETTINGS: streams may be opened right away.
    /// </summary>
    public static async Task<HboneClientConnection> StartAsync(Stream transport, HboneSettings settings, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(transport);
        var connection = new Http2Connection(transport, settings, isClient: true, onConnect: null);
        try
        {
            await connection.SendPrefaceAsync(ct).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            connection.Abort(null);
            if (e is OperationCanceledException)
            {
                throw;
            }
            throw new HboneException("sending the HTTP/2 preface failed: " + e.Message, inner: e);
        }
        return new HboneClientConnection(connection);
    }

    /// <summary>Streams open (or awaiting their response) on this connection.</summary>
    public int ActiveStreams => _connection.ActiveStreams;

    /// <summary>
    /// False when min(our MaxConcurrentStreams, the peer's SETTINGS_MAX_CONCURRENT_STREAMS) streams are
    /// open, after a GOAWAY, or once the connection has failed or closed.
    /// </summary>
    public bool CanOpenStream => _connection.CanOpenStream;

    /// <summary>Completes when the connection has closed; faulted with <see cref="HboneException"/> when it failed.</summary>
    public Task Completion => _connection.Completion;

    /// <summary>
    /// Opens a CONNECT stream to <paramref name="authority"/> ("ip:port") with extra request fields
    /// (lowercase names, e.g. forwarded, traceparent, baggage). Completes on a 2xx response; throws
    /// <see cref="HboneException"/> with <see cref="HboneException.StatusCode"/> for any other final status,
    /// with <see cref="HboneException.ErrorCode"/> on RST_STREAM or GOAWAY (IsRetryable when the server
    /// never processed it).
    /// <para>
    /// <paramref name="firstData"/>, the client's first bytes, goes out with the request rather than after the answer, so
    /// that a new connection's first round trip crosses the tunnel once. When there were none yet, <paramref name="lateData"/>
    /// is asked for them while the answer is awaited (cancelled once it comes), and what it gives before then is sent at
    /// once. The server holds such bytes until it has decided (a refusal discards them, the destination never sees them). A
    /// stream that is never processed (IsRetryable) did not deliver them either, and may be opened again with the same
    /// bytes. What the windows could not take at once follows the answer.
    /// </para>
    /// </summary>
    public async Task<HboneStream> ConnectAsync(string authority, IEnumerable<KeyValuePair<string, string>> headers, CancellationToken ct,
        ReadOnlyMemory<byte> firstData = default, Func<CancellationToken, Task<ReadOnlyMemory<byte>>>? lateData = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(authority);
        (HboneStream stream, int firstSent) = await _connection.OpenStreamAsync(authority, headers ?? [], firstData, ct).ConfigureAwait(false);
        if (firstData.IsEmpty && lateData is not null)
        {
            try
            {
                (firstData, firstSent) = await SendLateDataAsync(stream, lateData, ct).ConfigureAwait(false);
            }
            catch
            {
                stream.Reset((uint)Http2ErrorCode.Cancel);
                throw;
            }
        }

        try
        {
            await stream.Response.Task.WaitAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            stream.Reset((uint)Http2ErrorCode.Cancel);
            throw;
        }

        if (firstSent < firstData.Length)
        {
            try
            {
                // Like any send of the stream's, this waits for window only as long as the stream lives.
                await stream.SendAsync(firstData[firstSent..]).ConfigureAwait(false);
            }
            catch
            {
                stream.Reset((uint)Http2ErrorCode.Cancel);
                throw;
            }
        }
        return stream;
    }

    /// <summary>
    /// Waits for the answer or the client's first bytes, whichever comes first; bytes that come first are sent now. Gives
    /// the bytes and how many of them went out (none when the answer came first: the caller sends them after it).
    /// </summary>
    private static async Task<(ReadOnlyMemory<byte> Data, int Sent)> SendLateDataAsync(HboneStream stream,
        Func<CancellationToken, Task<ReadOnlyMemory<byte>>> lateData, CancellationToken ct)
    {
        Task<ReadOnlyMemory<byte>> late;
        using (var answered = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            late = lateData(answered.Token);
            if (await Task.WhenAny(stream.Response.Task, late).ConfigureAwait(false) != late)
            {
                answered.Cancel();
            }
            // Completes at once once cancelled, with the bytes if they won the race with the cancellation.
            await late.ConfigureAwait(false);
        }

        ReadOnlyMemory<byte> data = late.Result;
        if (data.IsEmpty || stream.Response.Task.IsCompleted)
        {
            return (data, 0);
        }
        try
        {
            await stream.SendAsync(data).ConfigureAwait(false);
            return (data, data.Length);
        }
        catch (HboneException)
        {
            // The stream ended under the send: its answer tells why (a refusal there is retried with the same bytes).
            return (data, data.Length);
        }
    }

    /// <summary>GOAWAY(NO_ERROR) within the close timeout, then every stream fails and the transport closes.</summary>
    public async ValueTask DisposeAsync()
    {
        await _connection.SendGoAwayAndCloseAsync(Http2ErrorCode.NoError, null).ConfigureAwait(false);
        await _run.ConfigureAwait(false);
    }
}
