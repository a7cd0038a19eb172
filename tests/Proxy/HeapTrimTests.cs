using System.Runtime.InteropServices;
using Weft.Node;

namespace Weft.Tests.Proxy;

/// <summary>When the agent gives heap back after a burst of inbound connections.</summary>
public class HeapTrimTests
{
    [Fact]
    public void AfterABurstFallsToAnEighthOfItsPeak_TheHeapIsTrimmed_AndOnceMoreIfTheRestEndsBeforeTheNextCheck()
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
        Assert.True(trim.Check());
        held = 0;
        Assert.False(trim.Check());
    }

    [Fact]
    public void ATrim_LetsTheIdleDataBuffersGo()
    {
        var held = 4000;
        var buffers = new DataBuffers(maxIdle: 8);
        var (a, b) = (buffers.Rent(), buffers.Rent());
        buffers.Return(a);
        buffers.Return(b);
        using var trim = new HeapTrim(() => held, Timeout.InfiniteTimeSpan, buffers: buffers);

        Assert.False(trim.Check());
        Assert.Equal(2, buffers.Idle);
        held = 400;
        Assert.True(trim.Check());
        Assert.Equal(0, buffers.Idle);
    }

    [Fact]
    public void TunnelsABurstLeftOpen_TrimWhenMostOfThemClose_AtMostOnceInTheInterval()
    {
        var (held, tunnels) = (0, 0);
        var now = TimeSpan.Zero;
        using var trim = new HeapTrim(() => held, Timeout.InfiniteTimeSpan, () => now, tunnels: () => tunnels);

        tunnels = 48;
        Assert.False(trim.Check());
        tunnels = 30;                   // fewer than half have closed
        Assert.False(trim.Check());
        tunnels = 8;
        Assert.True(trim.Check());
        Assert.False(trim.Check());     // measured again from what is open after the trim

        tunnels = 40;
        Assert.False(trim.Check());
        now += TimeSpan.FromSeconds(10);
        tunnels = 4;
        Assert.False(trim.Check());     // within the interval since the last one
        now += HeapTrim.SettledInterval;
        Assert.True(trim.Check());

        tunnels = 20;
        Assert.False(trim.Check());
        now += HeapTrim.SettledInterval;
        tunnels = 10;                   // fewer than the threshold closed
        Assert.False(trim.Check());
    }

    [Fact]
    public void AfterATrim_NothingMoreEnded_NoSecondTrim()
    {
        var held = 4000;
        using var trim = new HeapTrim(() => held, Timeout.InfiniteTimeSpan);

        Assert.False(trim.Check());
        held = 400;
        Assert.True(trim.Check());
        Assert.False(trim.Check());
        held = 0;
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

    [Fact]
    public void ABurstThatStays_IsTrimmedOnceItSettles_AndAgainOnlyAfterGrowingByAnotherBurst()
    {
        var held = 0;
        var now = TimeSpan.Zero;
        using var trim = new HeapTrim(() => held, Timeout.InfiniteTimeSpan, () => now);

        held = 6000;
        Assert.False(trim.Check());   // still growing
        held = 10_000;
        Assert.False(trim.Check());
        Assert.False(trim.Check());   // one check without a change: not settled yet
        Assert.True(trim.Check());    // settled at 10,000
        Assert.False(trim.Check());
        Assert.False(trim.Check());   // held there: no second trim

        // connections coming and going around the level (within 1/64) do not make a new burst
        held = 10_100;
        Assert.False(trim.Check());
        held = 9_950;
        Assert.False(trim.Check());
        Assert.False(trim.Check());

        // another burst on top, a minute later: trimmed again once it settles
        now += TimeSpan.FromMinutes(1);
        held = 11_200;
        Assert.False(trim.Check());
        Assert.False(trim.Check());
        Assert.True(trim.Check());
    }

    [Fact]
    public void BurstsThatSettleOneAfterAnother_AreTrimmedAtMostOncePerInterval()
    {
        var held = 0;
        var now = TimeSpan.Zero;
        using var trim = new HeapTrim(() => held, Timeout.InfiniteTimeSpan, () => now);

        held = 2000;
        Assert.False(trim.Check());
        Assert.False(trim.Check());
        Assert.True(trim.Check());

        // a second burst settles 10 s later: it waits for the interval, then is trimmed once
        now += TimeSpan.FromSeconds(10);
        held = 4000;
        Assert.False(trim.Check());
        for (var s = 0; s < 10; s++)
        {
            now += TimeSpan.FromSeconds(1);
            Assert.False(trim.Check());
        }

        now = TimeSpan.FromSeconds(30);
        Assert.True(trim.Check());
        now += TimeSpan.FromSeconds(1);
        Assert.False(trim.Check());
    }

    [Fact]
    public void ALevelThatKeepsMoving_OrGrewByLessThanABurst_IsNotTrimmed()
    {
        var held = 0;
        using var trim = new HeapTrim(() => held, Timeout.InfiniteTimeSpan);

        held = HeapTrim.BurstThreshold - 1;
        for (var i = 0; i < 5; i++)
        {
            Assert.False(trim.Check());
        }

        // swinging by more than 1/64 each second never settles
        for (var i = 0; i < 6; i++)
        {
            held = i % 2 == 0 ? 5000 : 4800;
            Assert.False(trim.Check());
        }
    }

    [Fact]
    public unsafe void NativeHeapFreedInTheMiddleOfAnArena_GoesBackToTheKernelWhenTrimmed()
    {
        // 64 MiB of 4 KiB blocks, all freed but the last: the arena's top stays in use, so free() alone
        // returns nothing and the pages stay resident, as after a burst of TLS connections.
        const int Blocks = 16 * 1024;
        var held = new IntPtr[Blocks];
        for (var i = 0; i < Blocks; i++)
        {
            held[i] = Marshal.AllocHGlobal(4096);
            new Span<byte>((void*)held[i], 4096).Fill(1);
        }

        for (var i = 0; i < Blocks - 1; i++)
        {
            Marshal.FreeHGlobal(held[i]);
        }

        var before = AnonymousKib();
        HeapTrim.TrimNativeHeap();
        var after = AnonymousKib();
        Marshal.FreeHGlobal(held[Blocks - 1]);

        // Other tests allocate in this process meanwhile: ask for a quarter of what was freed.
        Assert.True(before - after >= 16 * 1024, $"anonymous RSS {before} KiB before the trim, {after} KiB after");
    }

    private static long AnonymousKib() =>
        long.Parse(File.ReadAllLines("/proc/self/status").Single(l => l.StartsWith("RssAnon:", StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
}
