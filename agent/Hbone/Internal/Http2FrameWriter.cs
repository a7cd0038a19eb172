using System.Buffers;
using System.IO.Pipelines;
using System.Threading.Channels;

namespace Weft.Hbone.Internal;

/// <summary>
/// The write side of a connection: one lock over the transport's PipeWriter, taken in turn by stream send
/// loops (DATA), stream openers and responders (HEADERS), and the control loop that drains queued ACKs,
/// RST_STREAMs and WINDOW_UPDATEs. The read loop only queues, so it never waits for a write.
/// </summary>
internal sealed class Http2FrameWriter
{
    private const int MaxPendingPeerTriggeredFrames = 1024;

    private readonly PipeWriter _output;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly Channel<ControlFrame> _control = Channel.CreateUnbounded<ControlFrame>(new UnboundedChannelOptions { SingleReader = true });
    private readonly CancellationToken _aborted;
    private readonly Action<Exception?> _abortConnection;
    private int _pendingPeerFrames;
    private int _peerMaxFrameSize = FrameHeader.MinMaxFrameSize;

    /// <param name="aborted">Cancelled when the connection ends; a writer waiting for the lock gives up.</param>
    /// <param name="abortConnection">Ends the connection when the transport fails under a write.</param>
    public Http2FrameWriter(PipeWriter output, CancellationToken aborted, Action<Exception?> abortConnection)
    {
        _output = output;
        _aborted = aborted;
        _abortConnection = abortConnection;
    }

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
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
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
    public async ValueTask WriteDataAsync(HboneStream stream, ReadOnlySequence<byte> data, bool endStream)
    {
        if (!await AcquireAsync().ConfigureAwait(false))
        {
            throw new HboneException("connection closed");
        }
        try
        {
            // A RST_STREAM already queued means nothing more may follow on this stream.
            if (stream.ResetSent)
            {
                throw new HboneException($"stream {stream.StreamId} reset");
            }
            int maxFrame = PeerMaxFrameSize;
            while (data.Length > maxFrame)
            {
                FrameWriter.WriteData(_output, stream.StreamId, data.Slice(0, maxFrame), endStream: false);
                data = data.Slice(maxFrame);
            }
            FrameWriter.WriteData(_output, stream.StreamId, data, endStream);
            await FlushLockedAsync().ConfigureAwait(false);
        }
        finally
        {
            _writeLock.Release();
        }
    }

    /// <summary>
    /// Opens a stream and writes its request headers under one turn of the lock, so stream ids go out in
    /// the order they are allocated. <paramref name="open"/> runs under the lock and may throw to refuse.
    /// </summary>
    public async Task<HboneStream> WriteRequestHeadersAsync(Func<HboneStream> open, ReadOnlyMemory<byte> block, CancellationToken ct)
    {
        await _writeLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            HboneStream stream = open();
            FrameWriter.WriteHeaderBlock(_output, stream.StreamId, block.Span, endStream: false, PeerMaxFrameSize);
            await FlushLockedAsync().ConfigureAwait(false);
            return stream;
        }
        finally
        {
            _writeLock.Release();
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
            await FlushLockedAsync().ConfigureAwait(false);
        }
        finally
        {
            _writeLock.Release();
        }
    }

    /// <summary>Best effort GOAWAY within <paramref name="timeout"/>; false when the peer did not take it.</summary>
    public async Task<bool> TryWriteGoAwayAsync(int lastStreamId, Http2ErrorCode code, TimeSpan timeout)
    {
        using var timeoutSource = new CancellationTokenSource(timeout);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(timeoutSource.Token, _aborted);
        try
        {
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
                    await FlushLockedAsync().ConfigureAwait(false);
                }
                finally
                {
                    _writeLock.Release();
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
}
