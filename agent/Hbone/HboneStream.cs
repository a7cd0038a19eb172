using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.IO.Pipelines;
using Weft.Hbone.Internal;
using Weft.Hbone.Internal.FlowControl;

namespace Weft.Hbone;

/// <summary>
/// One CONNECT tunnel: a byte stream each way over an HTTP/2 stream.
/// <code>
///   app ──Output──► outbound pipe ──send loop (peer's windows)──► DATA frames ──► peer
///   app ◄──Input─── inbound pipe ◄──connection read loop◄──────── DATA frames ◄── peer
///                        └─ bytes the app consumes → WINDOW_UPDATE
///
///   relay: socket ──SendAsync──────────────────────────────────► DATA frames ──► peer   (SendDirectly)
///   relay: socket ◄──TryTake (read loop) / pipe + drain if full ◄ DATA frames ◄── peer   (DeliverTo)
/// </code>
/// <see cref="Output"/>.Complete() sends END_STREAM (half-close); <see cref="Input"/> completes when the
/// peer sends END_STREAM, and fails with <see cref="HboneException"/> when the stream or connection is
/// reset. The receive window is returned only as the application consumes (AdvanceTo), so a reader that
/// stops stalls only its own stream.
/// </summary>
internal sealed class HboneStream : IDuplexPipe, IAsyncDisposable
{
    private readonly Http2Connection _connection;
    private Pipe? _inbound;           // made on first need (under _inboundSync): a stream delivered to a sink has none while it keeps up
    private Pipe? _outbound;          // made on first use of Output (under _sendSync): a relay that sends directly needs none
    private InboundReader? _input;    // made on first use of Input
    private readonly object _inboundSync = new();
    private bool _inboundCompleted;   // under _inboundSync
    private bool _inputAbandoned;     // under _inboundSync
    private long _buffered;           // delivered, not yet consumed; under _inboundSync
    private Exception? _inboundError;  // under _inboundSync: why the inbound side ended, null for END_STREAM
    private IInboundSink? _sink;      // under _inboundSync
    private bool _draining;           // under _inboundSync: the sink fell behind; the pipe holds what it has not taken
    private bool _sinkDone;           // under _inboundSync: the sink was told End or Failed
    private readonly object _sendSync = new();
    private Task? _sendLoop;          // under _sendSync
    private bool _sendingStarted;     // under _sendSync: the 200 went out or came back
    private bool _sendsDirectly;      // under _sendSync: SendAsync/EndOutputAsync instead of Output
    private volatile bool _outboundAborted;  // set under _sendSync
    private volatile bool _resetSent;
    private int _disposed;
    // Set when the stream ends abnormally; whoever relays it closes its other side at once. The token source is made
    // only when someone asks for Aborted: a relay hears of it through its sink, without a registration (192 bytes of
    // each held connection in the load suite's heap dump: the source, its registrations and the callback node).
    private int _abortedFlag;
    private CancellationTokenSource? _abortedSource;

    // Options are immutable: one instance for every stream (per send-buffer size) instead of two per stream, which an
    // idle stream held (144 bytes of each held connection in the load suite's heap dump).
    private static readonly PipeOptions InboundPipeOptions = new(readerScheduler: PipeScheduler.Inline, pauseWriterThreshold: 0, resumeWriterThreshold: 0, useSynchronizationContext: false);
    private static readonly ConcurrentDictionary<int, PipeOptions> OutboundPipeOptions = new();

    internal HboneStream(Http2Connection connection, int streamId, int peerInitialWindow, HboneSettings settings)
    {
        _connection = connection;
        StreamId = streamId;
        SendFlow = new StreamOutputFlowControl(streamId, peerInitialWindow);
        ReceiveFlow = new InputFlowControl(settings.StreamWindow, settings.StreamWindow / 4);
        _sendBuffer = settings.StreamSendBuffer;
    }

    private readonly int _sendBuffer;

    public int StreamId { get; }

    /// <summary>The stream of the HBONE connection this stream is carried on (its TLS stream).</summary>
    public Stream Transport => _connection.Transport;

    /// <summary>Bytes from the peer; completes on the peer's END_STREAM.</summary>
    public PipeReader Input
    {
        get
        {
            if (Volatile.Read(ref _input) is { } input)
            {
                return input;
            }
            PipeReader inner;
            lock (_inboundSync)
            {
                if (_sink is not null)
                {
                    throw new InvalidOperationException($"stream {StreamId} is delivered to a sink, not read through Input");
                }
                inner = InboundPipe().Reader;
            }
            var made = new InboundReader(this, inner);
            return Interlocked.CompareExchange(ref _input, made, null) ?? made;
        }
    }

    // The read loop never waits on the inbound pipe: the stream window bounds what it can hold. A waiting
    // reader resumes inline on the read loop; InboundReader hands it on to the thread pool unless the
    // application asked to be resumed there (ResumeReadsOnReadLoop).
    private Pipe InboundPipe()
    {
        Debug.Assert(Monitor.IsEntered(_inboundSync));
        if (_inbound is null)
        {
            _inbound = new Pipe(InboundPipeOptions);
            if (_inboundCompleted)
            {
                _inbound.Writer.Complete(_inboundError);
            }
        }
        return _inbound;
    }

    /// <summary>
    /// From now on the peer's bytes go to <paramref name="sink"/>: on the connection's read loop, as each DATA frame
    /// is parsed, with their window credit returned as soon as the sink takes them. What the sink cannot take at once
    /// waits in a pipe made for the purpose, and a loop hands it over with <see cref="IInboundSink.TakeAsync"/>; once
    /// it has caught up, bytes go straight to the sink again. So a stream whose consumer keeps up holds no pipe, no
    /// pending read and no buffer. The sink hears <see cref="IInboundSink.End"/> after the last byte (END_STREAM, or
    /// the reset or connection loss that ended the stream), or <see cref="IInboundSink.Failed"/> once it threw; one of
    /// the two, once. Use this or <see cref="Input"/>, before either is used.
    /// </summary>
    internal void DeliverTo(IInboundSink sink)
    {
        bool end = false;
        PipeReader? drain = null;
        lock (_inboundSync)
        {
            if (_sink is not null || _input is not null)
            {
                throw new InvalidOperationException($"stream {StreamId} already has a reader");
            }
            _sink = sink;
            if (_inputAbandoned)
            {
                end = true;
            }
            else if (_buffered > 0)
            {
                // Bytes came before the sink did (a client's first bytes come with its request): they go first, from the
                // pipe, on this thread, which is not the read loop's.
                _draining = true;
                drain = _inbound!.Reader;
            }
            else if (_inboundCompleted)
            {
                end = true;
            }
        }
        if (drain is not null)
        {
            _ = DrainToSinkAsync(drain, sink, onThisThread: true);
        }
        if (Volatile.Read(ref _abortedFlag) == 1)
        {
            // Aborted before the sink came (Abort looks for a sink after setting the flag; it may have told it too).
            sink.Aborted();
        }
        if (end)
        {
            EndSink();
        }
    }


    /// <summary>Bytes to the peer; Complete() half-closes (END_STREAM), Complete(exception) resets with CANCEL.</summary>
    public PipeWriter Output => OutboundPipe().Writer;

    private Pipe OutboundPipe()
    {
        lock (_sendSync)
        {
            if (_outbound is null)
            {
                if (_sendsDirectly)
                {
                    throw new InvalidOperationException($"stream {StreamId} sends directly, not through Output");
                }
                // The send loop resumes inline on the writer's FlushAsync: the bytes become a DATA frame and reach
                // the transport on the thread that wrote them, instead of a thread-pool hop per chunk (the cpu
                // part's profile in docs/benchmark.md). The loop only waits on the write lock and the windows.
                _outbound = new Pipe(OutboundPipeOptions.GetOrAdd(_sendBuffer, static size => new PipeOptions(
                    readerScheduler: PipeScheduler.Inline,
                    pauseWriterThreshold: size,
                    resumeWriterThreshold: size / 2,
                    useSynchronizationContext: false)));
                if (_outboundAborted)
                {
                    // Nobody will drain it: a writer gets completed-flush results rather than blocking.
                    _outbound.Reader.Complete();
                }
                else if (_sendingStarted)
                {
                    _sendLoop = SendLoopAsync(_outbound.Reader);
                }
            }
            return _outbound;
        }
    }

    /// <summary>
    /// From now on the application sends with <see cref="SendAsync"/> and ends with <see cref="EndOutputAsync"/>
    /// instead of writing to <see cref="Output"/>: its bytes become DATA frames straight from its own buffer, and
    /// the stream holds no outbound pipe and no send loop (the relay's socket buffer already holds what waits for
    /// the peer's windows). Call before the first use of <see cref="Output"/>.
    /// </summary>
    internal void SendDirectly()
    {
        lock (_sendSync)
        {
            if (_outbound is not null)
            {
                throw new InvalidOperationException($"stream {StreamId} already sends through Output");
            }
            _sendsDirectly = true;
        }
    }

    /// <summary>
    /// What a direct sender best hands <see cref="SendAsync"/> at most at a time: four DATA frames, which with their
    /// headers are four full TLS records (64 KiB of plaintext) in a tunnel.
    /// </summary>
    internal const int RecordAlignedSend = 4 * Internal.FrameHeader.RecordSizedData;

    /// <summary>
    /// Sends <paramref name="data"/> as DATA frames once the peer's windows allow; the buffer may be reused when
    /// this returns. Throws <see cref="HboneException"/> when the stream or its connection is gone.
    /// </summary>
    internal async ValueTask SendAsync(ReadOnlyMemory<byte> data)
    {
        var buffer = new ReadOnlySequence<byte>(data);
        while (!buffer.IsEmpty)
        {
            ThrowIfOutboundAborted();
            int granted = await _connection.ReserveSendWindowAsync(this, buffer.Length).ConfigureAwait(false);
            await _connection.WriteDataAsync(this, buffer.Slice(0, granted), endStream: false).ConfigureAwait(false);
            buffer = buffer.Slice(granted);
        }
    }

    /// <summary>Half-closes: END_STREAM after what <see cref="SendAsync"/> sent.</summary>
    internal async ValueTask EndOutputAsync()
    {
        ThrowIfOutboundAborted();
        await SendEndStreamAsync().ConfigureAwait(false);
    }

    /// <summary>END_STREAM, then the stream's local side is over.</summary>
    private async ValueTask SendEndStreamAsync()
    {
        // Set first: once the frame is out the peer may finish the stream and close the connection (a drained
        // tunnel) before this method goes on to record the end, and that close is not a loss for this stream.
        _sendingEndStream = true;
        await _connection.WriteDataAsync(this, ReadOnlySequence<byte>.Empty, endStream: true).ConfigureAwait(false);
        _connection.OnLocalEnd(this);
    }

    private volatile bool _sendingEndStream;

    /// <summary>
    /// The peer ended its side and our END_STREAM is being written: when the peer then closes the connection cleanly,
    /// the stream finished (a peer closes only once its streams are done), even if this side has not recorded it yet.
    /// </summary>
    internal bool FinishingWithOurEndStream => _sendingEndStream && IsRemoteEnded;

    private void ThrowIfOutboundAborted()
    {
        if (_outboundAborted)
        {
            throw ConnectionLoss ?? new HboneException($"stream {StreamId} ended");
        }
    }

    /// <summary>
    /// From now on a read of <see cref="Input"/> that waits for data resumes on the connection's read loop,
    /// in the turn that parsed the DATA frame, instead of one thread-pool hop later. Only for a reader that
    /// does a little non-blocking work per read (say, one send to a socket): every stream of
    /// the connection waits while it runs, and it runs under the stream's inbound lock.
    /// </summary>
    internal void ResumeReadsOnReadLoop() => ((InboundReader)Input).ResumeOnReadLoop = true;

    /// <summary>
    /// Cancelled when the stream ends without a clean close both ways: a reset by either side, a GOAWAY
    /// that refused it, or the loss of its connection (close, reset, keepalive timeout, protocol error).
    /// A relay registers here to close its socket at once, even while it is blocked writing to that
    /// socket or waiting on it for bytes the dead tunnel can no longer carry.
    /// </summary>
    public CancellationToken Aborted
    {
        get
        {
            var source = Volatile.Read(ref _abortedSource);
            if (source is null)
            {
                source = new CancellationTokenSource();
                if (Interlocked.CompareExchange(ref _abortedSource, source, null) is { } made)
                {
                    source.Dispose();
                    return made.Token;
                }

                // Abort sets the flag before it looks for a source: either it cancels this one or this sees the flag.
                if (Volatile.Read(ref _abortedFlag) == 1)
                {
                    source.Cancel();
                }
            }

            return source.Token;
        }
    }

    /// <summary>
    /// Lets go of the token source behind <see cref="Aborted"/> once whoever asked for it is done with it (a dial that
    /// was bounded by it): a held stream need not keep it, its registrations and their nodes. An abort still reaches
    /// the sink, and a later <see cref="Aborted"/> makes a new source.
    /// </summary>
    internal void ReleaseAbortedToken() => Interlocked.Exchange(ref _abortedSource, null);

    /// <summary>
    /// Why the stream's connection ended while the stream was still open (keepalive timeout, transport
    /// reset, protocol error, close); null while it is open and when the stream ended on its own.
    /// </summary>
    public HboneException? ConnectionLoss => Volatile.Read(ref _connectionLoss);

    private HboneException? _connectionLoss;

    // Where the stream is in its life (RFC 9113 5.1); the stream's own lock guards it, the connection asks and tells.
    private readonly object _stateSync = new();
    private bool _localEnded;        // under _stateSync
    private bool _remoteEnded;       // under _stateSync
    private bool _closed;            // under _stateSync
    private bool _responseReceived;  // under _stateSync

    /// <summary>Client: completes on a 2xx response, fails on any other or on a reset.</summary>
    internal readonly TaskCompletionSource Response = new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal bool IsClosed
    {
        get { lock (_stateSync) { return _closed; } }
    }

    internal bool IsRemoteEnded
    {
        get { lock (_stateSync) { return _remoteEnded; } }
    }

    /// <summary>Nothing more may come from the peer: it ended its side, or the stream is closed.</summary>
    internal bool IsRemoteEndedOrClosed
    {
        get { lock (_stateSync) { return _remoteEnded || _closed; } }
    }

    internal bool IsResponseReceived
    {
        get { lock (_stateSync) { return _responseReceived; } }
    }

    internal void MarkResponseReceived()
    {
        lock (_stateSync)
        {
            _responseReceived = true;
        }
    }

    /// <summary>The peer sent END_STREAM; true when that closed the stream (our side had ended already).</summary>
    internal bool EndRemote()
    {
        lock (_stateSync)
        {
            _remoteEnded = true;
            return _localEnded && TryCloseLocked();
        }
    }

    /// <summary>We sent END_STREAM; true when that closed the stream (the peer's side had ended already).</summary>
    internal bool EndLocal()
    {
        lock (_stateSync)
        {
            _localEnded = true;
            return _remoteEnded && TryCloseLocked();
        }
    }

    /// <summary>Closes the stream (reset, refusal, connection loss); true only for the call that closed it.</summary>
    internal bool TryClose()
    {
        lock (_stateSync)
        {
            return TryCloseLocked();
        }
    }

    private bool TryCloseLocked()
    {
        if (_closed)
        {
            return false;
        }
        _closed = true;
        return true;
    }

    /// <summary>What the peer still lets us send; changed only through the connection's send flow control.</summary>
    internal StreamOutputFlowControl SendFlow { get; }

    /// <summary>What we still let the peer send: the read loop takes, consumption gives back as WINDOW_UPDATE.</summary>
    internal InputFlowControl ReceiveFlow { get; }
    internal bool ResetSent => _resetSent;

    /// <summary>Abandons the stream now: RST_STREAM with <paramref name="errorCode"/> (default CANCEL), both directions fail.</summary>
    public void Reset(uint errorCode = (uint)Http2ErrorCode.Cancel) =>
        _connection.ResetStream(this, (Http2ErrorCode)errorCode, new HboneException($"stream {StreamId} reset locally", errorCode: (Http2ErrorCode)errorCode));

    /// <summary>
    /// Finishes the stream: completes <see cref="Output"/> if the application has not (END_STREAM after the
    /// buffered bytes, which waits for the peer's windows), then resets the stream if the peer is still sending.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        bool direct;
        lock (_sendSync)
        {
            direct = _sendsDirectly;
        }
        if (!direct)
        {
            // An application that never wrote still half-closes, as if it had completed Output.
            await OutboundPipe().Writer.CompleteAsync().ConfigureAwait(false);
        }
        Task? sendLoop;
        lock (_sendSync)
        {
            sendLoop = _sendLoop;
            if (sendLoop is null)
            {
                _outboundAborted = true;
            }
        }
        if (sendLoop is not null)
        {
            await sendLoop.ConfigureAwait(false);
        }
        if (Volatile.Read(ref _input) is { } input)
        {
            await input.CompleteAsync().ConfigureAwait(false);
        }
        else
        {
            OnInputAbandoned();
        }
        _connection.ReleaseStream(this);
    }

    internal void MarkResetSent() => _resetSent = true;

    /// <summary>Starts draining <see cref="Output"/> into DATA frames (after the 200 went out or came back).</summary>
    internal void StartSending()
    {
        lock (_sendSync)
        {
            _sendingStarted = true;
            if (_outbound is not null && _sendLoop is null && !_outboundAborted)
            {
                _sendLoop = SendLoopAsync(_outbound.Reader);
            }
        }
    }

    private async Task SendLoopAsync(PipeReader reader)
    {
        await Task.Yield();
        Exception? failure = null;
        try
        {
            while (true)
            {
                ReadResult result = await reader.ReadAsync().ConfigureAwait(false);
                if (result.IsCanceled || _outboundAborted)
                {
                    break;
                }
                ReadOnlySequence<byte> buffer = result.Buffer;
                while (!buffer.IsEmpty)
                {
                    int granted = await _connection.ReserveSendWindowAsync(this, buffer.Length).ConfigureAwait(false);
                    await _connection.WriteDataAsync(this, buffer.Slice(0, granted), endStream: false).ConfigureAwait(false);
                    buffer = buffer.Slice(granted);
                }
                reader.AdvanceTo(buffer.End);
                if (result.IsCompleted)
                {
                    await SendEndStreamAsync().ConfigureAwait(false);
                    break;
                }
            }
        }
        catch (HboneException)
        {
            // The stream or connection is gone; Input already carries the reason.
        }
        catch (OperationCanceledException)
        {
        }
        catch (Exception e)
        {
            // The application completed Output with an error: abort the tunnel rather than half-close it.
            failure = e;
        }
        finally
        {
            await reader.CompleteAsync().ConfigureAwait(false);
        }
        if (failure is not null)
        {
            _connection.ResetStream(this, Http2ErrorCode.Cancel, new HboneException($"stream {StreamId} output failed", errorCode: Http2ErrorCode.Cancel, inner: failure));
        }
    }

    /// <summary>Stops the send loop without END_STREAM (reset, connection loss).</summary>
    internal void AbortOutbound()
    {
        lock (_sendSync)
        {
            _outboundAborted = true;
            if (_outbound is null)
            {
                // Made later, it starts completed; a direct sender sees the flag.
                return;
            }
            if (_sendLoop is null)
            {
                // Nobody will drain it: release a writer blocked on backpressure.
                _outbound.Reader.Complete();
                return;
            }
        }
        _outbound.Reader.CancelPendingRead();
    }

    /// <summary>
    /// A sink takes the peer's bytes as they come (<see cref="DeliverTo"/>, and it has not fallen behind): what the read
    /// loop joins for it goes out in one piece. Read without the lock: a stale answer costs only a join missed or made.
    /// </summary>
    internal bool TakesDirectly => Volatile.Read(ref _sink) is not null && !Volatile.Read(ref _draining);

    /// <summary>Called by the read loop with a DATA payload. Returns the bytes to credit right away (discarded).</summary>
    internal int Deliver(in ReadOnlySequence<byte> data)
    {
        int taken = 0;
        Exception? failure = null;
        lock (_inboundSync)
        {
            if (_inboundCompleted || _inputAbandoned)
            {
                return (int)data.Length;
            }
            ReadOnlySequence<byte> rest = data;
            bool drain = false;
            if (_sink is not null && !_draining)
            {
                try
                {
                    foreach (ReadOnlyMemory<byte> segment in data)
                    {
                        int took = _sink.TryTake(segment.Span);
                        taken += took;
                        if (took < segment.Length)
                        {
                            break;
                        }
                    }
                }
                catch (Exception e)
                {
                    failure = e;
                }
                rest = data.Slice(taken);
                drain = failure is null && !rest.IsEmpty;
                _draining = drain;
            }
            if (failure is null && !rest.IsEmpty)
            {
                Pipe pipe = InboundPipe();
                foreach (ReadOnlyMemory<byte> segment in rest)
                {
                    pipe.Writer.Write(segment.Span);
                }
                _buffered += rest.Length;
                // Never blocks: pauseWriterThreshold is 0.
                _ = pipe.Writer.FlushAsync();
                if (drain)
                {
                    _ = DrainToSinkAsync(pipe.Reader, _sink!, onThisThread: false);
                }
            }
        }
        if (failure is not null)
        {
            // Nothing more reaches the sink; what came is credited back, as if it had been read.
            FailSink(failure);
            return (int)data.Length;
        }
        return taken;
    }

    /// <summary>
    /// Hands the pipe's bytes to the sink until it has caught up, then lets them go straight to it again. Unless
    /// <paramref name="onThisThread"/>, it goes on on the thread pool at once: it was started under the inbound lock, on
    /// the read loop, which must not wait for a sink.
    /// </summary>
    private async Task DrainToSinkAsync(PipeReader reader, IInboundSink sink, bool onThisThread)
    {
        if (!onThisThread)
        {
            await Task.Yield();
        }
        while (true)
        {
            ReadResult result;
            try
            {
                result = await reader.ReadAsync().ConfigureAwait(false);
            }
            catch (Exception)
            {
                // The stream failed (reset, connection loss): what is left is of no use.
                break;
            }
            if (result.IsCanceled)
            {
                // The input was abandoned (the sink failed, or the stream was disposed).
                return;
            }
            ReadOnlySequence<byte> buffer = result.Buffer;
            // Measured now: after AdvanceTo the pipe may reuse the buffer's segments.
            long length = buffer.Length;
            try
            {
                foreach (ReadOnlyMemory<byte> segment in buffer)
                {
                    await sink.TakeAsync(segment).ConfigureAwait(false);
                }
            }
            catch (Exception e)
            {
                FailSink(e);
                return;
            }
            reader.AdvanceTo(buffer.End);
            if (length > 0)
            {
                OnConsumed(length);
            }
            lock (_inboundSync)
            {
                if (_inputAbandoned)
                {
                    return;
                }
                if (_buffered == 0 && !_inboundCompleted)
                {
                    _draining = false;
                    return;
                }
                if (_buffered == 0 || result.IsCompleted)
                {
                    break;
                }
            }
        }
        EndSink();
    }

    /// <summary>Tells the sink the inbound side is over (after its last byte), once.</summary>
    private void EndSink()
    {
        IInboundSink? sink;
        Exception? error;
        lock (_inboundSync)
        {
            if (_sinkDone || _sink is null)
            {
                return;
            }
            _sinkDone = true;
            _inputAbandoned = true;
            sink = _sink;
            error = _inboundError;
        }
        sink.End(error);
    }

    /// <summary>The sink threw: nothing more goes to it, and what waits for it is credited back.</summary>
    private void FailSink(Exception error)
    {
        IInboundSink? sink;
        lock (_inboundSync)
        {
            if (_sinkDone || _sink is null)
            {
                return;
            }
            _sinkDone = true;
            sink = _sink;
        }
        OnInputAbandoned();
        sink.Failed(error);
    }

    /// <summary>Ends <see cref="Input"/>: normally on END_STREAM, with the error on reset or connection loss.</summary>
    internal void CompleteInbound(Exception? error)
    {
        bool endSink;
        lock (_inboundSync)
        {
            if (_inboundCompleted)
            {
                return;
            }
            _inboundCompleted = true;
            _inboundError = error;
            _inbound?.Writer.Complete(error);
            // A sink that has caught up hears of it now; one that is behind, after its last byte.
            endSink = _sink is not null && !_draining;
        }
        if (endSink)
        {
            EndSink();
        }
    }

    /// <summary>The connection ended with this stream still open: it is aborted, and remembers why.</summary>
    internal void AbortWithConnection(HboneException error)
    {
        Volatile.Write(ref _connectionLoss, error);
        Abort(error);
    }

    internal void Abort(Exception error)
    {
        // Aborted first: a reader woken by the failed input (inline, on this thread) already sees the stream aborted.
        Interlocked.Exchange(ref _abortedFlag, 1);
        try
        {
            Volatile.Read(ref _abortedSource)?.Cancel();
        }
        catch (AggregateException e)
        {
            // A consumer's callback failed; the stream is gone either way and the connection must carry on.
            Log.Debug("hbone", $"stream {StreamId}: abort callback failed: {e.InnerException?.Message}");
        }

        IInboundSink? sink;
        lock (_inboundSync)
        {
            sink = _sink;
        }
        sink?.Aborted();

        Response.TrySetException(error);
        CompleteInbound(error);
        AbortOutbound();
    }

    private void OnConsumed(long count)
    {
        lock (_inboundSync)
        {
            _buffered -= count;
        }
        _connection.OnConsumed(this, (int)count);
    }

    private void OnInputAbandoned()
    {
        long unread;
        lock (_inboundSync)
        {
            if (_inputAbandoned)
            {
                return;
            }
            _inputAbandoned = true;
            unread = _buffered;
            _buffered = 0;
            if (_sink is not null)
            {
                // A drain loop waiting on the pipe stops.
                _inbound?.Reader.CancelPendingRead();
            }
        }
        if (unread > 0)
        {
            _connection.OnConsumed(this, (int)unread);
        }
    }

    /// <summary>The application's view of the inbound pipe: consumption returns flow-control credit.</summary>
    private sealed class InboundReader(HboneStream stream, PipeReader inner) : PipeReader
    {
        private ReadOnlySequence<byte> _last;
        private volatile bool _resumeOnReadLoop;

        public bool ResumeOnReadLoop
        {
            set => _resumeOnReadLoop = value;
        }

        public override bool TryRead(out ReadResult result)
        {
            if (inner.TryRead(out result))
            {
                _last = result.Buffer;
                return true;
            }
            return false;
        }

        public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
        {
            ValueTask<ReadResult> read = inner.ReadAsync(cancellationToken);
            if (read.IsCompletedSuccessfully)
            {
                ReadResult result = read.Result;
                _last = result.Buffer;
                return new ValueTask<ReadResult>(result);
            }
            return _resumeOnReadLoop ? Remember(read) : RememberOnThreadPool(read);
        }

        private async ValueTask<ReadResult> Remember(ValueTask<ReadResult> read)
        {
            ReadResult result = await read.ConfigureAwait(false);
            _last = result.Buffer;
            return result;
        }

        private async ValueTask<ReadResult> RememberOnThreadPool(ValueTask<ReadResult> read)
        {
            ReadResult result = await read.ConfigureAwait(false);
            _last = result.Buffer;
            // The pipe resumed us on the read loop (or whichever thread completed it): an application that did
            // not ask for that continues on the thread pool, as it would with the pipe's default scheduler.
            await Task.Yield();
            return result;
        }

        public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
        {
            long count = _last.Slice(0, consumed).Length;
            _last = default;
            inner.AdvanceTo(consumed, examined);
            if (count > 0)
            {
                stream.OnConsumed(count);
            }
        }

        public override void CancelPendingRead() => inner.CancelPendingRead();

        public override void Complete(Exception? exception = null)
        {
            inner.Complete(exception);
            stream.OnInputAbandoned();
        }
    }
}

/// <summary>
/// Takes a tunnel stream's inbound bytes as they arrive (<see cref="HboneStream.DeliverTo"/>): the proxy's relay,
/// which sends them to its socket.
/// </summary>
internal interface IInboundSink
{
    /// <summary>Takes what it can of <paramref name="data"/> without waiting; returns how many bytes. Runs on the connection's read loop, under the stream's lock.</summary>
    int TryTake(ReadOnlySpan<byte> data);

    /// <summary>Takes all of <paramref name="data"/>, waiting as long as it needs.</summary>
    ValueTask TakeAsync(ReadOnlyMemory<byte> data);

    /// <summary>No more bytes: <paramref name="error"/> is null for the peer's END_STREAM, else the reset or connection loss.</summary>
    void End(Exception? error);

    /// <summary><see cref="TryTake"/> or <see cref="TakeAsync"/> threw <paramref name="error"/>; nothing more comes.</summary>
    void Failed(Exception error);

    /// <summary>
    /// The stream ended without a clean close both ways (a reset, a GOAWAY that refused it, its connection lost), told
    /// at once, even while bytes still wait for the sink (<see cref="End"/> comes after them). May come twice; must not throw.
    /// </summary>
    void Aborted();
}
