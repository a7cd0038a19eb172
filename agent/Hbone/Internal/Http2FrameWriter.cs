using System.Buffers;
using System.IO.Pipelines;
using System.Threading.Channels;

namespace Weft.Hbone.Internal;

/// <summary>
/// The write side of a connection: one lock over the transport's PipeWriter, taken in turn by stream send
/// loops (DATA), stream openers and responders (HEADERS), and the control loop that drains queued ACKs,
/// RST_STREAMs and WINDOW_UPDATEs. The read loop only queues, so it never waits for a write.
/// <para>
/// A stream's DATA that finds the lock taken is handed to the writer holding it, up to <see cref="MaxHandedChunks"/>
/// buffers (1 MiB) per connection: its frames are copied aside, the call returns at once, and the holder writes them after
/// its own and before it gives the lock up. Many streams on one tunnel then share a flush instead of waking each
/// other in turn for every frame (docs/benchmark.md, "One tunnel, eight streams"). A stream's frames keep their
/// order: the holder drains everything handed before the lock can pass to anyone else.
/// </para>
/// </summary>
internal sealed class Http2FrameWriter
{
    private const int MaxPendingPeerTriggeredFrames = 1024;

    /// <summary>At most this many <see cref="DataBuffers"/> buffers of frames wait for the holder, per connection.</summary>
    internal const int MaxHandedChunks = 16;

    /// <summary>
    /// A turn flushes what others handed it at most this many times; then it takes no more and passes the lock on,
    /// so a writer is not kept flushing other streams' bytes while its own stream waits.
    /// </summary>
    internal const int MaxHandedRounds = 8;

    private readonly PipeWriter _output;
    private readonly HboneCounters _counters;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly Channel<ControlFrame> _control = Channel.CreateUnbounded<ControlFrame>(new UnboundedChannelOptions { SingleReader = true });
    private readonly CancellationToken _aborted;
    private readonly Action<Exception?> _abortConnection;
    private int _pendingPeerFrames;
    private int _peerMaxFrameSize = FrameHeader.MinMaxFrameSize;

    // Frames handed to the lock's holder, and whether a holder takes them; guarded by _handSync.
    private readonly Lock _handSync = new();
    private readonly ChunkWriter _chunkWriter = new();
    private List<HandedFrames> _handed = [];
    private List<byte[]> _handChunks = [];
    private int _handChunkUsed;
    private bool _held;

    // The holder's spares, swapped with the two lists above to write what was handed outside _handSync.
    private List<HandedFrames> _writing = [];
    private List<byte[]> _writingChunks = [];

    /// <param name="aborted">Cancelled when the connection ends; a writer waiting for the lock gives up.</param>
    /// <param name="abortConnection">Ends the connection when the transport fails under a write.</param>
    /// <param name="counters">Where handed writes are counted, and the process's budget of handed buffers.</param>
    public Http2FrameWriter(PipeWriter output, CancellationToken aborted, Action<Exception?> abortConnection, HboneCounters counters)
    {
        _counters = counters;
        _output = output;
        _aborted = aborted;
        _abortConnection = abortConnection;
    }

    /// <summary>
    /// The payload of our DATA frames: a TLS record's worth with the header. Within any peer's limit: SETTINGS_MAX_FRAME_SIZE
    /// is at least 16,384 (a smaller value is a connection error when read).
    /// </summary>
    private const int DataFrameSize = FrameHeader.RecordSizedData;

    /// <summary>The peer's SETTINGS_MAX_FRAME_SIZE: no frame we write is larger.</summary>
    public int PeerMaxFrameSize
    {
        get => Volatile.Read(ref _peerMaxFrameSize);
        set => Volatile.Write(ref _peerMaxFrameSize, value);
    }

    /// <summary>Writes the client preface (client only), our SETTINGS and the connection WINDOW_UPDATE.</summary>
    public async Task WritePrefaceAsync(bool isClient, HboneSettings settings, CancellationToken ct)
    {
        if (isClient)
        {
            _output.Write(FrameHeader.ClientPreface);
        }
        var values = new List<(SettingId, uint)>
        {
            (SettingId.MaxConcurrentStreams, (uint)settings.MaxConcurrentStreams),
            (SettingId.InitialWindowSize, (uint)settings.StreamWindow),
            (SettingId.MaxFrameSize, (uint)settings.MaxFrameSize),
            (SettingId.MaxHeaderListSize, (uint)settings.MaxHeaderListSize),
        };
        if (isClient)
        {
            values.Insert(0, (SettingId.EnablePush, 0));
        }
        FrameWriter.WriteSettings(_output, values.ToArray());
        if (settings.ConnectionWindow > HboneSettings.DefaultWindowSize)
        {
            FrameWriter.WriteWindowUpdate(_output, 0, settings.ConnectionWindow - HboneSettings.DefaultWindowSize);
        }
        await _output.FlushAsync(ct).ConfigureAwait(false);
    }

    private async ValueTask<bool> AcquireAsync()
    {
        try
        {
            await _writeLock.WaitAsync(_aborted).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return false;
        }
        BeginTurn();
        return true;
    }

    /// <summary>The lock was just taken: from now on others may hand their DATA to this turn.</summary>
    private void BeginTurn()
    {
        lock (_handSync)
        {
            _held = true;
        }
    }

    /// <summary>
    /// Ends a turn: writes and flushes what was handed meanwhile until nothing is left, then gives the lock up.
    /// When the transport fails, what was handed is dropped with the connection.
    /// </summary>
    private async ValueTask EndTurnAsync()
    {
        try
        {
            int rounds = 0;
            while (true)
            {
                lock (_handSync)
                {
                    if (_handed.Count == 0)
                    {
                        _held = false;
                        break;
                    }
                    if (++rounds == MaxHandedRounds)
                    {
                        // The last round: what is handed now is written, and whoever comes next waits for the lock.
                        _held = false;
                    }
                }
                WriteHanded();
                await FlushLockedAsync().ConfigureAwait(false);
            }
        }
        catch (HboneException)
        {
            // FlushLockedAsync already failed the connection.
            DropHanded();
        }
        catch
        {
            DropHanded();
            throw;
        }
        finally
        {
            _writeLock.Release();
        }
    }

    /// <summary>
    /// Copies DATA frames for <paramref name="stream"/> aside for the writer holding the lock. False when nobody
    /// holds it, the frames do not fit what may wait, or the connection is over: the caller takes its own turn.
    /// </summary>
    private bool TryHand(HboneStream stream, in ReadOnlySequence<byte> data)
    {
        if (_aborted.IsCancellationRequested)
        {
            return false;
        }
        // A frame never spans two buffers; four record-sized frames fill one.
        lock (_handSync)
        {
            if (!_held || Fits(data.Length) is not { } newChunks)
            {
                return false;
            }
            for (int taken = 0; taken < newChunks; taken++)
            {
                if (!_counters.TryTakeHandedChunk())
                {
                    _counters.ReturnHandedChunks(taken);
                    return false;
                }
            }
            ReadOnlySequence<byte> rest = data;
            do
            {
                ReadOnlySequence<byte> payload = rest.Slice(0, Math.Min(rest.Length, DataFrameSize));
                int size = (int)payload.Length + FrameHeader.Size;
                if (_handChunks.Count == 0 || _handChunkUsed + size > DataBuffers.Size)
                {
                    _handChunks.Add(DataBuffers.Default.Rent());
                    _handChunkUsed = 0;
                }
                byte[] chunk = _handChunks[^1];
                FrameWriter.WriteData(_chunkWriter.Reset(chunk, _handChunkUsed), stream.StreamId, payload, endStream: false);
                _handed.Add(new HandedFrames(stream, chunk, _handChunkUsed, size));
                _handChunkUsed += size;
                rest = rest.Slice(payload.Length);
            }
            while (!rest.IsEmpty);
        }
        _counters.WriteHanded();
        return true;
    }

    /// <summary>
    /// Under _handSync: how many more buffers <paramref name="length"/> bytes in frames of at most
    /// <see cref="DataFrameSize"/> need, or null when that is more than the connection may rent.
    /// </summary>
    private int? Fits(long length)
    {
        int already = _handChunks.Count;
        int chunks = _handChunks.Count;
        int used = chunks == 0 ? DataBuffers.Size : _handChunkUsed;
        do
        {
            int payload = (int)Math.Min(length, DataFrameSize);
            int size = payload + FrameHeader.Size;
            if (used + size > DataBuffers.Size)
            {
                if (chunks == MaxHandedChunks)
                {
                    return null;
                }
                chunks++;
                used = 0;
            }
            used += size;
            length -= payload;
        }
        while (length > 0);
        return chunks - already;
    }

    /// <summary>Under the lock: what was handed goes into the transport's writer, except frames of streams reset since.</summary>
    private void WriteHanded()
    {
        lock (_handSync)
        {
            if (_handed.Count == 0)
            {
                return;
            }
            (_handed, _writing) = (_writing, _handed);
            (_handChunks, _writingChunks) = (_writingChunks, _handChunks);
            _handChunkUsed = 0;
        }
        foreach (HandedFrames frames in _writing)
        {
            // A RST_STREAM already queued means nothing more may follow on this stream.
            if (!frames.Stream.ResetSent)
            {
                _output.Write(frames.Chunk.AsSpan(frames.Offset, frames.Length));
            }
        }
        _writing.Clear();
        ReturnChunks(_writingChunks);
    }

    private void DropHanded()
    {
        lock (_handSync)
        {
            _handed.Clear();
            ReturnChunks(_handChunks);
            _handChunkUsed = 0;
            _held = false;
        }
    }

    private void ReturnChunks(List<byte[]> chunks)
    {
        _counters.ReturnHandedChunks(chunks.Count);
        foreach (byte[] chunk in chunks)
        {
            DataBuffers.Default.Return(chunk);
        }
        chunks.Clear();
    }

    private async ValueTask FlushLockedAsync()
    {
        try
        {
            await _output.FlushAsync(_aborted).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or OperationCanceledException or InvalidOperationException)
        {
            var failure = new HboneException("transport write failed: " + e.Message, inner: e);
            _abortConnection(_aborted.IsCancellationRequested ? null : failure);
            throw failure;
        }
    }

    /// <summary>DATA of one stream, split at the peer's frame size; nothing goes out once the stream's RST_STREAM is queued.</summary>
    /// <remarks>
    /// DATA without END_STREAM may be handed to the writer holding the lock (see the class): the call then returns
    /// before the frames reach the transport, as a socket's send returns before the bytes leave. END_STREAM always
    /// takes its own turn, so a stream is only reported ended once its last frame is out.
    /// </remarks>
    public async ValueTask WriteDataAsync(HboneStream stream, ReadOnlySequence<byte> data, bool endStream)
    {
        // A RST_STREAM already queued means nothing more may follow on this stream.
        if (stream.ResetSent)
        {
            throw new HboneException($"stream {stream.StreamId} reset");
        }
        if (endStream || !_writeLock.Wait(0))
        {
            if (!endStream && TryHand(stream, data))
            {
                return;
            }
            if (!await AcquireAsync().ConfigureAwait(false))
            {
                throw new HboneException("connection closed");
            }
        }
        else
        {
            BeginTurn();
        }
        try
        {
            if (stream.ResetSent)
            {
                throw new HboneException($"stream {stream.StreamId} reset");
            }
            WriteDataFrames(stream.StreamId, data, endStream, DataFrameSize);
            WriteHanded();
            await FlushLockedAsync().ConfigureAwait(false);
        }
        finally
        {
            await EndTurnAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Under the lock: <paramref name="data"/> as DATA frames of at most <paramref name="maxFrame"/> bytes, the last one with END_STREAM when asked (one empty frame for no data).</summary>
    private void WriteDataFrames(int streamId, ReadOnlySequence<byte> data, bool endStream, int maxFrame)
    {
        while (data.Length > maxFrame)
        {
            FrameWriter.WriteData(_output, streamId, data.Slice(0, maxFrame), endStream: false);
            data = data.Slice(maxFrame);
        }
        FrameWriter.WriteData(_output, streamId, data, endStream);
    }

    /// <summary>
    /// Opens a stream and writes its request headers under one turn of the lock, so stream ids go out in
    /// the order they are allocated. <paramref name="open"/> runs under the lock and may throw to refuse; it gives
    /// the new stream and how many bytes of <paramref name="firstData"/> the peer's windows took for it, which go
    /// out as DATA right behind the headers, in the same flush.
    /// </summary>
    public async Task<HboneStream> WriteRequestHeadersAsync(Func<(HboneStream Stream, int FirstData)> open, ReadOnlyMemory<byte> block,
        ReadOnlyMemory<byte> firstData, CancellationToken ct)
    {
        await _writeLock.WaitAsync(ct).ConfigureAwait(false);
        BeginTurn();
        try
        {
            (HboneStream stream, int first) = open();
            FrameWriter.WriteHeaderBlock(_output, stream.StreamId, block.Span, endStream: false, PeerMaxFrameSize);
            if (first > 0)
            {
                WriteDataFrames(stream.StreamId, new ReadOnlySequence<byte>(firstData[..first]), endStream: false, DataFrameSize);
            }
            WriteHanded();
            await FlushLockedAsync().ConfigureAwait(false);
            return stream;
        }
        finally
        {
            await EndTurnAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Response headers; <paramref name="check"/> runs under the lock and may throw when the stream is gone.</summary>
    public async Task WriteResponseHeadersAsync(HboneStream stream, ReadOnlyMemory<byte> block, bool endStream, Action check)
    {
        if (!await AcquireAsync().ConfigureAwait(false))
        {
            throw new HboneException("connection closed");
        }
        try
        {
            if (stream.ResetSent)
            {
                throw new HboneException($"stream {stream.StreamId} reset");
            }
            check();
            FrameWriter.WriteHeaderBlock(_output, stream.StreamId, block.Span, endStream, PeerMaxFrameSize);
            WriteHanded();
            await FlushLockedAsync().ConfigureAwait(false);
        }
        finally
        {
            await EndTurnAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Best effort GOAWAY within <paramref name="timeout"/>; false when the peer did not take it.</summary>
    public async Task<bool> TryWriteGoAwayAsync(int lastStreamId, Http2ErrorCode code, TimeSpan timeout)
    {
        using var timeoutSource = new CancellationTokenSource(timeout);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(timeoutSource.Token, _aborted);
        try
        {
            // No turn is begun here: nothing may be handed to a GOAWAY, whose flush gives up on a peer that does not
            // read, and nothing waits from a turn before (a turn drains what it was handed before it ends).
            await _writeLock.WaitAsync(linked.Token).ConfigureAwait(false);
            try
            {
                FrameWriter.WriteGoAway(_output, lastStreamId, code);
                await _output.FlushAsync(linked.Token).ConfigureAwait(false);
                return true;
            }
            finally
            {
                _writeLock.Release();
            }
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or ObjectDisposedException or InvalidOperationException)
        {
            // The peer is not reading or already gone; closing is all that is left.
            return false;
        }
    }

    public void EnqueueWindowUpdate(int streamId, int increment) =>
        _control.Writer.TryWrite(new ControlFrame(ControlKind.WindowUpdate, streamId, increment));

    public void EnqueueRstStream(int streamId, Http2ErrorCode code) =>
        _control.Writer.TryWrite(new ControlFrame(ControlKind.RstStream, streamId, (long)code));

    public void EnqueuePing(ulong payload) =>
        _control.Writer.TryWrite(new ControlFrame(ControlKind.Ping, 0, (long)payload));

    public void EnqueueSettingsAck() => EnqueuePeerTriggered(new ControlFrame(ControlKind.SettingsAck, 0, 0));

    public void EnqueuePingAck(ulong opaque) => EnqueuePeerTriggered(new ControlFrame(ControlKind.PingAck, 0, (long)opaque));

    /// <summary>A RST_STREAM the peer provoked on a stream we no longer hold.</summary>
    public void EnqueuePeerTriggeredRstStream(int streamId, Http2ErrorCode code) =>
        EnqueuePeerTriggered(new ControlFrame(ControlKind.RstStream, streamId, (long)code));

    private void EnqueuePeerTriggered(ControlFrame frame)
    {
        // ACKs and resets the peer can provoke at will are counted, so a peer that floods us while never
        // reading what we answer is cut off instead of growing the queue.
        if (Interlocked.Increment(ref _pendingPeerFrames) > MaxPendingPeerTriggeredFrames)
        {
            throw new Http2ConnectionException(Http2ErrorCode.EnhanceYourCalm, "too many unanswered control frames");
        }
        _control.Writer.TryWrite(frame with { PeerTriggered = true });
    }

    /// <summary>No more control frames: the control loop ends.</summary>
    public void CompleteControl() => _control.Writer.TryComplete();

    /// <summary>Writes queued control frames until the connection ends.</summary>
    public async Task RunControlLoopAsync()
    {
        ChannelReader<ControlFrame> reader = _control.Reader;
        try
        {
            while (await reader.WaitToReadAsync(_aborted).ConfigureAwait(false))
            {
                if (!await AcquireAsync().ConfigureAwait(false))
                {
                    return;
                }
                try
                {
                    while (reader.TryRead(out ControlFrame frame))
                    {
                        WriteControlFrame(frame);
                        if (frame.PeerTriggered)
                        {
                            Interlocked.Decrement(ref _pendingPeerFrames);
                        }
                    }
                    WriteHanded();
                    await FlushLockedAsync().ConfigureAwait(false);
                }
                finally
                {
                    await EndTurnAsync().ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (HboneException)
        {
            // FlushLockedAsync already failed the connection.
        }
    }

    private void WriteControlFrame(ControlFrame frame)
    {
        switch (frame.Kind)
        {
            case ControlKind.SettingsAck: FrameWriter.WriteSettingsAck(_output); break;
            case ControlKind.PingAck: FrameWriter.WritePing(_output, (ulong)frame.Value, ack: true); break;
            case ControlKind.Ping: FrameWriter.WritePing(_output, (ulong)frame.Value, ack: false); break;
            case ControlKind.WindowUpdate: FrameWriter.WriteWindowUpdate(_output, frame.StreamId, (int)frame.Value); break;
            case ControlKind.RstStream: FrameWriter.WriteRstStream(_output, frame.StreamId, (Http2ErrorCode)frame.Value); break;
        }
    }

    private enum ControlKind : byte
    {
        SettingsAck,
        PingAck,
        Ping,
        WindowUpdate,
        RstStream,
    }

    private readonly record struct ControlFrame(ControlKind Kind, int StreamId, long Value, bool PeerTriggered = false);

    /// <summary>A DATA frame of a stream, encoded, in a handed chunk.</summary>
    private readonly record struct HandedFrames(HboneStream Stream, byte[] Chunk, int Offset, int Length);

    /// <summary>Writes frames into a chunk at an offset; <see cref="TryHand"/> has checked they fit.</summary>
    private sealed class ChunkWriter : IBufferWriter<byte>
    {
        private byte[] _chunk = [];
        private int _position;

        public ChunkWriter Reset(byte[] chunk, int offset)
        {
            _chunk = chunk;
            _position = offset;
            return this;
        }

        public void Advance(int count) => _position += count;

        public Memory<byte> GetMemory(int sizeHint = 0) => _chunk.AsMemory(_position);

        public Span<byte> GetSpan(int sizeHint = 0) => _chunk.AsSpan(_position);
    }
}
