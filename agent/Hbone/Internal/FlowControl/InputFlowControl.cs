namespace Weft.Hbone.Internal.FlowControl;

/// <summary>
/// A receive window (the connection's or one stream's): DATA from the peer takes from it, and bytes the
/// application consumes come back as WINDOW_UPDATE credit once enough has gathered to be worth a frame.
/// Lock-free: the read loop takes, consumers on any thread give back.
/// </summary>
internal sealed class InputFlowControl
{
    private readonly int _creditThreshold;
    private int _window;
    private int _pendingCredit;

    public InputFlowControl(int window, int creditThreshold)
    {
        _window = window;
        _creditThreshold = Math.Max(creditThreshold, 1);
    }

    /// <summary>What the peer may still send before it overruns the window.</summary>
    public int Available => Volatile.Read(ref _window);

    /// <summary>Takes a received frame's length (padding included); false when the peer overran the window.</summary>
    public bool TryReceive(int length) => Interlocked.Add(ref _window, -length) >= 0;

    /// <summary>Returns consumed bytes; gives the increment to announce in a WINDOW_UPDATE now, or 0 to wait for more.</summary>
    public int Consume(int count)
    {
        if (Interlocked.Add(ref _pendingCredit, count) < _creditThreshold)
        {
            return 0;
        }
        int increment = Interlocked.Exchange(ref _pendingCredit, 0);
        if (increment > 0)
        {
            Interlocked.Add(ref _window, increment);
        }
        return increment;
    }
}
