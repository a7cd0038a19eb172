using System.Buffers;
using System.IO.Pipelines;
using Weft.Hbone.Internal.FlowControl;
using Weft.Hbone.Internal.Hpack;

namespace Weft.Hbone.Internal;

/// <summary>
/// One HTTP/2 connection carrying CONNECT streams, for either role: it decides, its parts do the work.
/// <code>
///   transport ──► Http2FrameReader ──IHttp2FrameHandler──► this: stream table, SETTINGS, GOAWAY, new streams
///                  (framing, checks, HPACK)                  │   DATA → stream inbound pipes (InputFlowControl)
///                                                            └─► Http2FrameWriter control queue (ACK, RST, WINDOW_UPDATE)
///   stream send loops ── ConnectionOutputFlowControl (both windows) ──► Http2FrameWriter (write lock) ──► transport
///   Keepalive ── PING every interval, Abort when unanswered
/// </code>
/// The read loop never waits for a write (a peer that does not read cannot stop us from reading its
/// WINDOW_UPDATEs), the inbound side is bounded by the windows we advertise, and everything the peer
/// can make us queue is counted.
/// </summary>
internal sealed class Http2Connection : IHttp2FrameHandler
{
    private const string Component = "hbone";
    // Largest chunk one stream writes per turn of the write lock, so streams interleave fairly.
    private const int MaxDataPerTurn = HboneStream.RecordAlignedSend;

    private readonly Stream _transport;
    private readonly HboneSettings _settings;
    private readonly bool _isClient;
    private readonly Func<HboneRequest, Task>? _onConnect;
    private readonly Http2FrameReader _reader;
    private readonly Http2FrameWriter _writer;
    private readonly Keepalive _keepalive;
    private readonly CancellationTokenSource _abort = new();
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

    // Guarded by _sync.
    private readonly object _sync = new();
    private readonly Http2StreamTable _streams;
    private TaskCompletionSource? _handlersDone;   // under _sync: someone waits for _handlersInFlight to reach 0
    private int _peerInitialWindow = HboneSettings.DefaultWindowSize;
    private long _peerMaxConcurrentStreams = uint.MaxValue;
    private bool _goAwayReceived;
    private bool _goAwaySent;
    private int _goAwayLastStreamId = int.MaxValue;
    private bool _closed;
    private int _handlersInFlight;

    private readonly ConnectionOutputFlowControl _sendFlow = new(HboneSettings.DefaultWindowSize);
    private readonly InputFlowControl _receiveFlow;

    // The read loop's only: one stream's consecutive DATA payloads, joined while more bytes are already read, so that
    // its consumer takes them in one piece (one send to the app's socket rather than one per TLS record). Handed over
    // before any other frame, before the reader waits, and when the loop ends; so never held while the peer is awaited.
    private readonly IReadAheadTransport? _readAhead;
    private byte[]? _joined;
    private int _joinedLength;
    private HboneStream? _joinedStream;

    /// <summary>What the connection's frames are read from and written to (the tunnel's TLS stream).</summary>
    public Stream Transport => _transport;

    public Http2Connection(Stream transport, HboneSettings settings, bool isClient, Func<HboneRequest, Task>? onConnect)
    {
        settings.Validate();
        _transport = transport;
        _settings = settings;
        _isClient = isClient;
        _onConnect = onConnect;
        _streams = new Http2StreamTable(isClient);
        _reader = new Http2FrameReader(PipeReader.Create(transport, new StreamPipeReaderOptions(pool: DataBuffers.Default, bufferSize: DataBuffers.Size, minimumReadSize: 4096, leaveOpen: true, useZeroByteReads: true)), settings, isClient, this);
        _writer = new Http2FrameWriter(PipeWriter.Create(transport, new StreamPipeWriterOptions(pool: DataBuffers.Default, minimumBufferSize: DataBuffers.Size, leaveOpen: true)), _abort.Token, Abort, settings.Counters);
        _keepalive = new Keepalive(settings.KeepaliveInterval, settings.KeepaliveTimeout, _writer.EnqueuePing, Abort);
        _receiveFlow = new InputFlowControl(settings.ConnectionWindow, Math.Min(settings.ConnectionWindow / 8, settings.StreamWindow / 4));
        _readAhead = transport as IReadAheadTransport;
        if (_readAhead is not null)
        {
            _readAhead.BeforeWait = HandOverJoined;
        }
    }

    public Task Completion => _completion.Task;

    public int ActiveStreams
    {
        get { lock (_sync) { return _streams.Count; } }
    }

    public bool CanOpenStream
    {
        get { lock (_sync) { return CanOpenStreamLocked(); } }
    }

    private bool CanOpenStreamLocked() =>
        !_closed && !_goAwayReceived && _streams.HasFreeStreamId &&
        _streams.Count < Math.Min(_settings.MaxConcurrentStreams, _peerMaxConcurrentStreams);

    // ---- start-up -------------------------------------------------------------------------------

    /// <summary>Writes the client preface (client only), our SETTINGS and the connection WINDOW_UPDATE.</summary>
    public Task SendPrefaceAsync(CancellationToken ct) => _writer.WritePrefaceAsync(_isClient, _settings, ct);

    /// <summary>Runs the connection until it ends; never throws (the outcome is in <see cref="Completion"/>).</summary>
    public async Task RunAsync()
    {
        Task control = _writer.RunControlLoopAsync();
        Task keepalive = _keepalive.RunAsync(_abort.Token);
        await ReadLoopAsync().ConfigureAwait(false);
        await control.ConfigureAwait(false);
        await keepalive.ConfigureAwait(false);
    }

    /// <summary>
    /// Waits for server handlers still running after the connection ended. Counted, not kept: a set of handler tasks
    /// with a removal continuation each cost about 200 bytes per held stream (the load suite's heap dump).
    /// </summary>
    public Task WaitForHandlersAsync()
    {
        lock (_sync)
        {
            return _handlersInFlight == 0 ? Task.CompletedTask
                : (_handlersDone ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)).Task;
        }
    }

    // ---- read side ------------------------------------------------------------------------------

    private async Task ReadLoopAsync()
    {
        Exception? failure = null;
        Http2ErrorCode? goAway = null;
        try
        {
            await _reader.ReadAsync(_abort.Token).ConfigureAwait(false);
        }
        catch (Http2ConnectionException e)
        {
            goAway = e.Code;
            failure = new HboneException($"HTTP/2 connection error {e.Code}: {e.Message}", errorCode: e.Code);
            Log.Debug(Component, $"connection error {e.Code}: {e.Message}");
        }
        catch (OperationCanceledException) when (_abort.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            // Transport failures, and anything unforeseen: either way only this connection ends.
            if (!_abort.IsCancellationRequested)
            {
                failure = new HboneException("transport failed: " + e.Message, inner: e);
                if (e is not (IOException or ObjectDisposedException or InvalidOperationException))
                {
                    Log.Warn(Component, $"connection ended by an unexpected {e.GetType().Name}: {e.Message}");
                }
            }
        }
        // What came before the end goes before the streams hear of it.
        HandOverJoined();
        if (goAway is { } code)
        {
            await SendGoAwayAndCloseAsync(code, failure).ConfigureAwait(false);
        }
        else
        {
            Abort(failure);
        }
    }

    /// <summary>A stream id the peer could not have used yet (never opened by either side).</summary>
    private bool IsIdle(int streamId)
    {
        lock (_sync)
        {
            return _streams.IsIdle(streamId);
        }
    }

    private HboneStream? FindStream(int streamId)
    {
        lock (_sync)
        {
            return _streams.Find(streamId);
        }
    }

    void IHttp2FrameHandler.OnData(int streamId, int frameLength, in ReadOnlySequence<byte> data, bool endStream, bool moreFollows)
    {
        // The whole frame counts against both windows, padding included.
        if (!_receiveFlow.TryReceive(frameLength))
        {
            throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, "peer overran the connection window");
        }
        HboneStream? stream = FindStream(streamId);
        if (stream is null)
        {
            if (IsIdle(streamId))
            {
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"DATA on idle stream {streamId}");
            }
            // Closed or reset by us: frames in flight still arrive. Drop them, keep the connection window open.
            AddConnectionCredit(frameLength);
            return;
        }
        if (!stream.ReceiveFlow.TryReceive(frameLength))
        {
            throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, $"peer overran the window of stream {streamId}");
        }
        bool remoteEnded = stream.IsRemoteEnded;
        bool responded = stream.IsResponseReceived;
        if (remoteEnded)
        {
            AddConnectionCredit(frameLength);
            throw new Http2StreamException(streamId, Http2ErrorCode.StreamClosed, "DATA after END_STREAM");
        }
        if (_isClient && !responded)
        {
            AddConnectionCredit(frameLength);
            throw new Http2StreamException(streamId, Http2ErrorCode.ProtocolError, "DATA before the response");
        }
        int overhead = frameLength - (int)data.Length;
        int discarded = data.IsEmpty ? 0 : DeliverOrJoin(stream, data, moreFollows, endStream);
        if (overhead + discarded > 0)
        {
            OnConsumed(stream, overhead + discarded);
        }
        if (endStream)
        {
            // An empty END_STREAM: what is joined for the stream goes before its end.
            HandOverJoined();
            OnRemoteEnd(stream);
        }
    }

    void IHttp2FrameHandler.HandOverData(bool endOfRead)
    {
        if (!endOfRead || _readAhead is not { HasReadAhead: true })
        {
            HandOverJoined();
        }
    }

    /// <summary>
    /// Gives a DATA payload to its stream now, or joins it to the payloads held for that stream while more bytes are
    /// already read (<paramref name="moreFollows"/>, or the transport's read-ahead) and the stream's consumer takes
    /// bytes directly. The last payload that fits is handed over with those held before it, so a run of frames is one
    /// piece; a stream's last payload (<paramref name="endStream"/>) is handed over at once, as its end follows. Returns
    /// the bytes to credit now, as <see cref="HboneStream.Deliver"/> does; joined ones are credited when handed over.
    /// </summary>
    private int DeliverOrJoin(HboneStream stream, in ReadOnlySequence<byte> data, bool moreFollows, bool endStream)
    {
        if (_joinedStream is not null && _joinedStream != stream)
        {
            HandOverJoined();
        }
        bool more = !endStream && (moreFollows || _readAhead is { HasReadAhead: true });
        if (_joinedStream is not null)
        {
            if (_joinedLength + data.Length <= DataBuffers.Size)
            {
                Join(data);
                _settings.Counters.FrameJoined();
                if (!more)
                {
                    HandOverJoined();
                }
                return 0;
            }
            HandOverJoined();
        }
        if (more && data.Length < DataBuffers.Size && stream.TakesDirectly)
        {
            _joinedStream = stream;
            Join(data);
            return 0;
        }
        return stream.Deliver(data);
    }

    private void Join(in ReadOnlySequence<byte> data)
    {
        _joined ??= DataBuffers.Default.Rent();
        data.CopyTo(_joined.AsSpan(_joinedLength));
        _joinedLength += (int)data.Length;
    }

    /// <summary>Hands what is joined to its stream and gives the buffer back; on the read loop's thread only.</summary>
    private void HandOverJoined()
    {
        if (_joinedStream is not { } stream)
        {
            return;
        }
        byte[] joined = _joined!;
        int length = _joinedLength;
        (_joined, _joinedLength, _joinedStream) = (null, 0, null);
        int credit;
        try
        {
            // Whatever the stream's consumer does not take at once it copies into its own pipe.
            credit = stream.Deliver(new ReadOnlySequence<byte>(joined, 0, length));
        }
        finally
        {
            DataBuffers.Default.Return(joined);
        }
        if (credit > 0)
        {
            OnConsumed(stream, credit);
        }
    }

    void IHttp2FrameHandler.OnHeaders(int streamId, bool endStream, List<KeyValuePair<string, string>> fields)
    {
        if (_isClient)
        {
            OnResponseHeaders(streamId, endStream, fields);
        }
        else
        {
            OnRequestHeaders(streamId, endStream, fields);
        }
    }

    private void OnRequestHeaders(int streamId, bool endStream, List<KeyValuePair<string, string>> decoded)
    {
        if ((streamId & 1) == 0)
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"client used even stream id {streamId}");
        }
        if (streamId <= _streams.LastPeerStreamId)
        {
            HboneStream? existing = FindStream(streamId);
            if (existing is null)
            {
                throw new Http2ConnectionException(Http2ErrorCode.StreamClosed, $"HEADERS on closed stream {streamId}");
            }
            // Trailers: they must end the stream; their content means nothing to a tunnel.
            if (!endStream)
            {
                throw new Http2StreamException(streamId, Http2ErrorCode.ProtocolError, "trailers without END_STREAM");
            }
            OnRemoteEnd(existing);
            return;
        }
        lock (_sync)
        {
            _streams.AcceptPeerStreamId(streamId);
        }
        string? problem = HeaderRules.ValidateConnectRequest(decoded, out string authority, out var fields);
        if (problem is not null)
        {
            throw new Http2StreamException(streamId, Http2ErrorCode.ProtocolError, problem);
        }
        HboneStream stream;
        HboneRequest request;
        lock (_sync)
        {
            if (_closed)
            {
                return;
            }
            // Handlers still running count, not just open streams: a stream the peer reset at once keeps
            // its slot until its handler has let go of what it holds (RFC 9113 5.1.2; no dial happens here).
            if (_goAwaySent)
            {
                // Crossed our GOAWAY in flight: the client retries it on another connection.
                throw new Http2StreamException(streamId, Http2ErrorCode.RefusedStream, "connection is going away");
            }
            if (_handlersInFlight >= _settings.MaxConcurrentStreams)
            {
                _settings.Counters.StreamRefused(_settings.MaxConcurrentStreams);
                throw new Http2StreamException(streamId, Http2ErrorCode.RefusedStream, "too many concurrent streams");
            }
            stream = new HboneStream(this, streamId, _peerInitialWindow, _settings);
            _streams.Add(stream);
            _handlersInFlight++;
            request = new HboneRequest(this, stream, authority, fields);
            // The handler runs off the read loop; the loop only records it.
            _ = RunHandlerAsync(request);
        }
        if (endStream)
        {
            OnRemoteEnd(stream);
        }
    }

    private async Task RunHandlerAsync(HboneRequest request)
    {
        await Task.Yield();
        try
        {
            await _onConnect!(request).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            Log.Debug(Component, $"CONNECT handler for {request.Authority} failed: {e.Message}");
        }
        if (!request.Detached)
        {
            await FinishHandlerAsync(request).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// What follows a handler: a 500 when it left the CONNECT unanswered, the stream closed, the handler no longer
    /// counted. Once per request: when its handler returns, or when a handler that detached says it is done.
    /// </summary>
    internal async Task FinishHandlerAsync(HboneRequest request)
    {
        if (!request.TryFinish())
        {
            return;
        }
        try
        {
            if (!request.Responded)
            {
                await request.RejectAsync(500).ConfigureAwait(false);
            }
            await request.Stream.DisposeAsync().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            Log.Debug(Component, $"closing stream {request.Stream.StreamId}: {e.Message}");
        }
        finally
        {
            TaskCompletionSource? done = null;
            lock (_sync)
            {
                if (--_handlersInFlight == 0)
                {
                    (done, _handlersDone) = (_handlersDone, null);
                }
            }
            done?.TrySetResult();
        }
    }

    private void OnResponseHeaders(int streamId, bool endStream, List<KeyValuePair<string, string>> decoded)
    {
        HboneStream? stream = FindStream(streamId);
        if (stream is null)
        {
            if ((streamId & 1) == 0 || IsIdle(streamId))
            {
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"HEADERS on idle stream {streamId}");
            }
            return; // a stream we already reset
        }
        bool responded = stream.IsResponseReceived;
        if (responded)
        {
            if (!endStream)
            {
                throw new Http2StreamException(streamId, Http2ErrorCode.ProtocolError, "trailers without END_STREAM");
            }
            OnRemoteEnd(stream);
            return;
        }
        string? problem = HeaderRules.ValidateResponse(decoded, out int status);
        if (problem is not null)
        {
            throw new Http2StreamException(streamId, Http2ErrorCode.ProtocolError, problem);
        }
        if (status is >= 100 and < 200)
        {
            if (endStream)
            {
                throw new Http2StreamException(streamId, Http2ErrorCode.ProtocolError, "interim response with END_STREAM");
            }
            return;
        }
        if (status is >= 200 and < 300)
        {
            stream.MarkResponseReceived();
            stream.StartSending();
            stream.Response.TrySetResult();
            if (endStream)
            {
                OnRemoteEnd(stream);
            }
            return;
        }
        var refused = new HboneException($"CONNECT refused with status {status}", statusCode: status);
        stream.Response.TrySetException(refused);
        ResetStream(stream, Http2ErrorCode.Cancel, refused);
    }

    void IHttp2FrameHandler.OnRstStream(int streamId, Http2ErrorCode code)
    {
        if (IsIdle(streamId))
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"RST_STREAM on idle stream {streamId}");
        }
        HboneStream? stream = FindStream(streamId);
        if (stream is null)
        {
            return;
        }
        var error = new HboneException($"stream {streamId} reset by peer ({code})", errorCode: code)
        {
            IsRetryable = code == Http2ErrorCode.RefusedStream,
        };
        CloseStream(stream, error);
    }

    void IHttp2FrameHandler.OnSetting(SettingId id, uint value)
    {
        switch (id)
        {
            case SettingId.MaxConcurrentStreams:
                lock (_sync)
                {
                    _peerMaxConcurrentStreams = value;
                }
                break;
            case SettingId.InitialWindowSize:
                ChangeInitialWindow((int)value);
                break;
            case SettingId.MaxFrameSize:
                _writer.PeerMaxFrameSize = (int)value;
                break;
            default:
                // HEADER_TABLE_SIZE does not matter to an encoder that never indexes; unknown ids are ignored.
                break;
        }
    }

    void IHttp2FrameHandler.OnSettingsApplied() => _writer.EnqueueSettingsAck();

    void IHttp2FrameHandler.OnStreamError(Http2StreamException e)
    {
        Log.Debug(Component, $"stream {e.StreamId} error {e.Code}: {e.Message}");
        ResetStreamFromPeerError(e.StreamId, e.Code, e.Message);
    }

    private void ChangeInitialWindow(int value)
    {
        lock (_sync)
        {
            long delta = value - (long)_peerInitialWindow;
            _peerInitialWindow = value;
            _sendFlow.ChangeInitialWindow(_streams.Streams.Select(static s => s.SendFlow), delta);
        }
    }

    void IHttp2FrameHandler.OnPing(ulong opaque, bool ack)
    {
        if (ack)
        {
            _keepalive.OnPingAck(opaque);
            return;
        }
        _writer.EnqueuePingAck(opaque);
    }

    void IHttp2FrameHandler.OnGoAway(int lastStreamId, Http2ErrorCode code)
    {
        Log.Debug(Component, $"GOAWAY from peer: last stream {lastStreamId}, {code}");
        List<HboneStream> refused = [];
        lock (_sync)
        {
            _goAwayReceived = true;
            _goAwayLastStreamId = Math.Min(_goAwayLastStreamId, lastStreamId);
            foreach (HboneStream stream in _streams.Streams)
            {
                if (_streams.IsOurs(stream.StreamId) && stream.StreamId > lastStreamId)
                {
                    refused.Add(stream);
                }
            }
        }
        foreach (HboneStream stream in refused)
        {
            CloseStream(stream, new HboneException($"stream {stream.StreamId} not processed: peer sent GOAWAY ({code})", errorCode: code) { IsRetryable = true });
        }
        CloseIfDrained();
    }

    void IHttp2FrameHandler.OnWindowUpdate(int streamId, int increment)
    {
        if (streamId == 0)
        {
            _sendFlow.Increase(increment);
            return;
        }
        if (IsIdle(streamId))
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"WINDOW_UPDATE on idle stream {streamId}");
        }
        HboneStream? stream = FindStream(streamId);
        if (stream is null)
        {
            return;
        }
        _sendFlow.IncreaseStream(stream.SendFlow, increment);
    }

    // ---- stream lifecycle ----------------------------------------------------------------------

    private void OnRemoteEnd(HboneStream stream)
    {
        bool closed;
        lock (_sync)
        {
            closed = stream.EndRemote() && RemoveClosedLocked(stream);
        }
        stream.CompleteInbound(null);
        if (closed)
        {
            CloseIfDrained();
        }
    }

    public void OnLocalEnd(HboneStream stream)
    {
        bool closed;
        lock (_sync)
        {
            closed = stream.EndLocal() && RemoveClosedLocked(stream);
        }
        if (closed)
        {
            CloseIfDrained();
        }
    }

    private bool RemoveLocked(HboneStream stream) => stream.TryClose() && RemoveClosedLocked(stream);

    /// <summary>Takes a stream that has just closed out of the table; its writer, if waiting for credit, fails.</summary>
    private bool RemoveClosedLocked(HboneStream stream)
    {
        _streams.Remove(stream);
        _sendFlow.Complete(stream.SendFlow, new HboneException($"stream {stream.StreamId} closed"));
        return true;
    }

    /// <summary>Closes a stream without telling the peer (it reset it, or the connection is going).</summary>
    private void CloseStream(HboneStream stream, HboneException error)
    {
        lock (_sync)
        {
            RemoveLocked(stream);
        }
        stream.Abort(error);
        CloseIfDrained();
    }

    /// <summary>RST_STREAM to the peer and fail both directions locally.</summary>
    public void ResetStream(HboneStream stream, Http2ErrorCode code, HboneException error)
    {
        lock (_sync)
        {
            if (!RemoveLocked(stream))
            {
                return;
            }
        }
        stream.MarkResetSent();
        _writer.EnqueueRstStream(stream.StreamId, code);
        stream.Abort(error);
        CloseIfDrained();
    }

    private void ResetStreamFromPeerError(int streamId, Http2ErrorCode code, string message)
    {
        HboneStream? stream = FindStream(streamId);
        if (stream is null)
        {
            _writer.EnqueuePeerTriggeredRstStream(streamId, code);
            return;
        }
        ResetStream(stream, code, new HboneException($"stream {streamId}: {message}", errorCode: code));
    }

    /// <summary>Called when the application is done with a stream: reset it if it is still open.</summary>
    public void ReleaseStream(HboneStream stream)
    {
        if (!stream.IsClosed)
        {
            ResetStream(stream, Http2ErrorCode.Cancel, new HboneException($"stream {stream.StreamId} disposed", errorCode: Http2ErrorCode.Cancel));
        }
    }

    private void CloseIfDrained()
    {
        bool drained;
        lock (_sync)
        {
            drained = (_goAwayReceived || _goAwaySent) && _streams.Count == 0 && !_closed;
        }
        if (drained)
        {
            Abort(null);
        }
    }

    // ---- flow control --------------------------------------------------------------------------

    /// <summary>Waits until both windows allow at least one byte; takes up to <paramref name="wanted"/> from them.</summary>
    public ValueTask<int> ReserveSendWindowAsync(HboneStream stream, long wanted) =>
        _sendFlow.ReserveAsync(stream.SendFlow, wanted, MaxDataPerTurn);

    /// <summary>The application consumed (or we discarded) bytes of a stream: return window credit.</summary>
    public void OnConsumed(HboneStream stream, int count)
    {
        AddConnectionCredit(count);
        if (stream.IsRemoteEndedOrClosed)
        {
            return;
        }
        int increment = stream.ReceiveFlow.Consume(count);
        if (increment > 0)
        {
            _writer.EnqueueWindowUpdate(stream.StreamId, increment);
        }
    }

    private void AddConnectionCredit(int count)
    {
        int increment = _receiveFlow.Consume(count);
        if (increment > 0)
        {
            _writer.EnqueueWindowUpdate(0, increment);
        }
    }

    // ---- write side ----------------------------------------------------------------------------

    public ValueTask WriteDataAsync(HboneStream stream, ReadOnlySequence<byte> data, bool endStream) =>
        _writer.WriteDataAsync(stream, data, endStream);

    /// <summary>
    /// Client: allocates the next stream id and sends the CONNECT request in one step, so ids go out in order, with as
    /// much of <paramref name="firstData"/> as the peer's windows allow now right behind it (<c>FirstSent</c> bytes).
    /// </summary>
    public async Task<(HboneStream Stream, int FirstSent)> OpenStreamAsync(string authority, IEnumerable<KeyValuePair<string, string>> headers,
        ReadOnlyMemory<byte> firstData, CancellationToken ct)
    {
        var fields = new List<KeyValuePair<string, string>> { new(":method", "CONNECT"), new(":authority", authority) };
        foreach (var field in headers)
        {
            string? problem = HeaderRules.ValidateOutgoingField(field.Key, field.Value);
            if (problem is not null)
            {
                throw new ArgumentException(problem, nameof(headers));
            }
            fields.Add(field);
        }
        var block = new ArrayBufferWriter<byte>(256);
        HpackEncoder.Encode(fields, block);

        int firstSent = 0;
        HboneStream opened = await _writer.WriteRequestHeadersAsync(() =>
        {
            HboneStream stream;
            lock (_sync)
            {
                if (!CanOpenStreamLocked())
                {
                    throw new HboneException(_closed || _goAwayReceived ? "connection is closing" : "connection has no free stream", errorCode: Http2ErrorCode.RefusedStream) { IsRetryable = true };
                }
                stream = new HboneStream(this, _streams.TakeStreamId(), _peerInitialWindow, _settings);
                _streams.Add(stream);
            }
            // Only what the windows allow now goes with the headers; the opener sends the rest once the stream is answered.
            firstSent = firstData.IsEmpty ? 0 : _sendFlow.TryReserveNow(stream.SendFlow, firstData.Length, MaxDataPerTurn);
            return (stream, firstSent);
        }, block.WrittenMemory, firstData, ct).ConfigureAwait(false);
        return (opened, firstSent);
    }

    /// <summary>Server: sends the response HEADERS for a CONNECT.</summary>
    public async Task SendResponseAsync(HboneStream stream, int status, bool endStream)
    {
        var block = new ArrayBufferWriter<byte>(16);
        HpackEncoder.EncodeField(":status", status.ToString(System.Globalization.CultureInfo.InvariantCulture), block);
        await _writer.WriteResponseHeadersAsync(stream, block.WrittenMemory, endStream, () =>
        {
            if (stream.IsClosed)
            {
                throw new HboneException($"stream {stream.StreamId} closed before the response");
            }
        }).ConfigureAwait(false);
    }

    // ---- shutdown ------------------------------------------------------------------------------

    /// <summary>
    /// A graceful end: GOAWAY(NO_ERROR) naming the last stream taken, so the peer opens new streams on
    /// another connection; the streams already taken carry on, and the connection closes after the last.
    /// </summary>
    public async Task GoAwayGracefullyAsync()
    {
        int lastStreamId;
        lock (_sync)
        {
            if (_closed || _goAwaySent)
            {
                return;
            }
            _goAwaySent = true;
            lastStreamId = _streams.LastPeerStreamId;
        }
        await _writer.TryWriteGoAwayAsync(lastStreamId, Http2ErrorCode.NoError, _settings.CloseTimeout).ConfigureAwait(false);
        CloseIfDrained();
    }

    /// <summary>Best effort GOAWAY within the close timeout, then close.</summary>
    public async Task SendGoAwayAndCloseAsync(Http2ErrorCode code, Exception? failure)
    {
        int lastStreamId;
        lock (_sync)
        {
            lastStreamId = _streams.LastPeerStreamId;
        }
        await _writer.TryWriteGoAwayAsync(lastStreamId, code, _settings.CloseTimeout).ConfigureAwait(false);
        Abort(failure);
    }

    /// <summary>Ends the connection now: every stream fails, the transport is closed.</summary>
    public void Abort(Exception? failure)
    {
        List<HboneStream> streams;
        var streamError = failure as HboneException ?? new HboneException("HBONE connection closed", inner: failure);
        lock (_sync)
        {
            if (_closed)
            {
                return;
            }
            _closed = true;
            streams = _streams.RemoveAll();
            foreach (HboneStream stream in streams)
            {
                stream.TryClose();
                _sendFlow.Complete(stream.SendFlow, new HboneException("connection closed"));
            }
            // Writers of streams already gone from the table are failed too, never left waiting.
            _sendFlow.Abort(streamError);
            _keepalive.Stop();
        }
        _abort.Cancel();
        _writer.CompleteControl();
        foreach (HboneStream stream in streams)
        {
            if (failure is null && stream.FinishingWithOurEndStream)
            {
                // Done both ways, bar recording our END_STREAM, which the peer read before closing: not a loss, and
                // resetting its socket now could throw away bytes its app has not read yet.
                continue;
            }
            stream.AbortWithConnection(streamError);
        }
        try
        {
            _transport.Dispose();
        }
        catch (Exception e)
        {
            Log.Debug(Component, "closing transport: " + e.Message);
        }
        if (failure is null)
        {
            _completion.TrySetResult();
        }
        else
        {
            _completion.TrySetException(failure);
        }
    }
}
