namespace Weft;

/// <summary>A count of something held under a maximum, taken and given back from any thread.</summary>
internal static class Limit
{
    /// <summary>Takes one more of <paramref name="held"/> when fewer than <paramref name="max"/> are held; false, and nothing taken, when none is free.</summary>
    public static bool TryTake(ref int held, int max)
    {
        if (Interlocked.Increment(ref held) <= max)
        {
            return true;
        }

        Interlocked.Decrement(ref held);
        return false;
    }
}
