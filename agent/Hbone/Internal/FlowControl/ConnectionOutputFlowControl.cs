namespace Weft.Hbone.Internal.FlowControl;

/// <summary>
/// The connection's send window and the stream windows under it (RFC 9113 section 6.9). One lock guards
/// them all, so a reservation takes from a stream's window and the connection's in one step; a writer
/// with no credit waits until a WINDOW_UPDATE or SETTINGS change gives some, or the stream or connection ends.
/// </summary>
internal sealed class ConnectionOutputFlowControl(int initialWindow)
{
    private readonly object _sync = new();
    private readonly List<StreamOutputFlowControl> _connectionWaiters = [];
    private long _window = initialWindow;
    private Exception? _aborted;

    public long Available
    {
        get { lock (_sync) { return _window; } }
    }

    /// <summary>Waits until both windows allow at least one byte; takes up to <paramref name="wanted"/> (at most <paramref name="maxPerTurn"/>) from them.</summary>
    public async ValueTask<int> ReserveAsync(StreamOutputFlowControl stream, long wanted, int maxPerTurn)
    {
        while (true)
        {
            TaskCompletionSource waiter;
            lock (_sync)
            {
                if (stream.Completed is not null || _aborted is not null)
                {
                    throw new HboneException($"stream {stream.StreamId} closed");
                }
                int granted = TakeLocked(stream, wanted, maxPerTurn);
                if (granted > 0)
                {
                    return granted;
                }
                waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                stream.Waiter = waiter;
                if (stream.Window > 0)
                {
                    // Only the connection window is short: its WINDOW_UPDATE must wake this writer.
                    _connectionWaiters.Add(stream);
                }
            }
            await waiter.Task.ConfigureAwait(false);
        }
    }

    /// <summary>What both windows allow now, up to <paramref name="wanted"/> (at most <paramref name="maxPerTurn"/>), taken; 0 when nothing, without waiting.</summary>
    public int TryReserveNow(StreamOutputFlowControl stream, long wanted, int maxPerTurn)
    {
        lock (_sync)
        {
            return stream.Completed is null && _aborted is null ? TakeLocked(stream, wanted, maxPerTurn) : 0;
        }
    }

    private int TakeLocked(StreamOutputFlowControl stream, long wanted, int maxPerTurn)
    {
        long granted = Math.Min(Math.Min(wanted, maxPerTurn), Math.Min(stream.Window, _window));
        if (granted <= 0)
        {
            return 0;
        }
        stream.Window -= granted;
        _window -= granted;
        return (int)granted;
    }

    /// <summary>A connection WINDOW_UPDATE: 0 is a PROTOCOL_ERROR, past 2^31-1 a FLOW_CONTROL_ERROR (connection errors).</summary>
    public void Increase(int increment)
    {
        if (increment == 0)
        {
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "connection WINDOW_UPDATE of 0");
        }
        lock (_sync)
        {
            _window += increment;
            if (_window > FrameHeader.MaxWindow)
            {
                throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, "connection window above 2^31-1");
            }
            foreach (StreamOutputFlowControl waiter in _connectionWaiters)
            {
                waiter.Wake();
            }
            _connectionWaiters.Clear();
        }
    }

    /// <summary>A stream WINDOW_UPDATE: 0 is a PROTOCOL_ERROR, past 2^31-1 a FLOW_CONTROL_ERROR (stream errors).</summary>
    public void IncreaseStream(StreamOutputFlowControl stream, int increment)
    {
        if (increment == 0)
        {
            throw new Http2StreamException(stream.StreamId, Http2ErrorCode.ProtocolError, "stream WINDOW_UPDATE of 0");
        }
        lock (_sync)
        {
            stream.Window += increment;
            if (stream.Window > FrameHeader.MaxWindow)
            {
                throw new Http2StreamException(stream.StreamId, Http2ErrorCode.FlowControlError, "stream window above 2^31-1");
            }
            stream.Wake();
        }
    }

    /// <summary>The peer changed SETTINGS_INITIAL_WINDOW_SIZE: every open stream's window moves by the difference.</summary>
    public void ChangeInitialWindow(IEnumerable<StreamOutputFlowControl> streams, long delta)
    {
        lock (_sync)
        {
            foreach (StreamOutputFlowControl stream in streams)
            {
                stream.Window += delta;
                if (stream.Window > FrameHeader.MaxWindow)
                {
                    throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, "initial window change overflows a stream window");
                }
                stream.Wake();
            }
        }
    }

    /// <summary>The stream closed: its writer, if waiting, fails with <paramref name="error"/>; it reserves nothing more.</summary>
    public void Complete(StreamOutputFlowControl stream, Exception error)
    {
        lock (_sync)
        {
            stream.Completed ??= error;
            _connectionWaiters.Remove(stream);
            stream.Fail(error);
        }
    }

    /// <summary>The connection ended: every waiting writer fails with <paramref name="error"/>, and nothing more is reserved.</summary>
    public void Abort(Exception error)
    {
        lock (_sync)
        {
            _aborted ??= error;
            foreach (StreamOutputFlowControl waiter in _connectionWaiters)
            {
                waiter.Fail(error);
            }
            _connectionWaiters.Clear();
        }
    }
}
