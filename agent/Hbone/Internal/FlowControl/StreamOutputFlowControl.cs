namespace Weft.Hbone.Internal.FlowControl;

/// <summary>
/// One stream's send window and its writer waiting for credit. Only <see cref="ConnectionOutputFlowControl"/>
/// changes it, under its lock, because a reservation takes from this window and the connection's at once.
/// </summary>
internal sealed class StreamOutputFlowControl(int streamId, int initialWindow)
{
    public int StreamId { get; } = streamId;

    /// <summary>May go negative when the peer lowers SETTINGS_INITIAL_WINDOW_SIZE (RFC 9113 6.9.2).</summary>
    internal long Window { get; set; } = initialWindow;

    internal TaskCompletionSource? Waiter { get; set; }

    /// <summary>The stream is closed: nothing more may be reserved.</summary>
    internal Exception? Completed { get; set; }

    internal void Wake()
    {
        Waiter?.TrySetResult();
        Waiter = null;
    }

    internal void Fail(Exception error)
    {
        Waiter?.TrySetException(error);
        Waiter = null;
    }
}
