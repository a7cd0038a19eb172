using Weft.Node;

namespace Weft.Tests.Proxy;

/// <summary>When the agent gives heap back after a burst of inbound connections.</summary>
public class HeapTrimTests
{
    [Fact]
    public void AfterABurstFallsToAnEighthOfItsPeak_TheHeapIsTrimmedOnce()
    {
        var held = 0;
        using var trim = new HeapTrim(() => held, Timeout.InfiniteTimeSpan);

        held = 4000;
        Assert.False(trim.Check());
        held = 1000;
        Assert.False(trim.Check());
        held = 400;
        Assert.True(trim.Check());
        held = 10;
        Assert.False(trim.Check());
    }

    [Fact]
    public void OrdinaryTraffic_BelowTheBurstThreshold_IsLeftToTheGc()
    {
        var held = HeapTrim.BurstThreshold - 1;
        using var trim = new HeapTrim(() => held, Timeout.InfiniteTimeSpan);

        Assert.False(trim.Check());
        held = 0;
        Assert.False(trim.Check());
    }
}
