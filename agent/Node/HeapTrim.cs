using System.Runtime;
using System.Runtime.InteropServices;

namespace Weft.Node;

/// <summary>
/// Gives memory back to the kernel after a burst of connections (inbound or outbound) ends, and once one
/// settles. An agent that goes idle allocates nothing, so no collection would run and the heap grown for
/// thousands of connections (their buffers and records) would stay resident: after a flood, RSS would not come
/// back. The native heap (OpenSSL's and the runtime's own allocations, in glibc's arenas) keeps its freed pages
/// too until <c>malloc_trim</c> hands them back. Checked once a second; collects when what is held fell to an
/// eighth of its peak, and once more at the next check if it fell further.
/// <para>
/// A burst that stays (thousands of connections opened and then held) leaves the GC with free regions it
/// committed while they opened: 19–25 MB beside a 31–38 MB heap for 10,000 held connections, kept by a
/// normal full collection (docs/benchmark.md). So once what is held has grown by <see cref="BurstThreshold"/>
/// since the last trim (or the lowest point since) and has then barely moved for <see cref="SettledChecks"/>
/// checks, it collects once too; at most once per <see cref="SettledInterval"/>, so a pod that opens and holds
/// bursts over and over adds at most that to the trims a burst that ends already costs.
/// </para>
/// </summary>
internal sealed partial class HeapTrim : IDisposable
{
    /// <summary>Bursts smaller than this are ordinary traffic; the GC's own pace is fine for them.</summary>
    public const int BurstThreshold = 1000;

    /// <summary>Checks in a row over which what is held barely moved, after a burst, before the heap is trimmed.</summary>
    public const int SettledChecks = 2;

    /// <summary>The least time between two trims of a settled burst, and between two trims for closed tunnels.</summary>
    public static readonly TimeSpan SettledInterval = TimeSpan.FromSeconds(30);

    /// <summary>Tunnels that must have closed (and at least half of those open at the peak) before they alone trim.</summary>
    public const int TunnelBurstThreshold = 16;

    private readonly Func<int> _held;
    private readonly Func<int> _tunnels;
    private readonly DataBuffers _buffers;
    private readonly Func<TimeSpan> _now;
    private readonly Timer _timer;
    private TimeSpan? _lastSettledTrim;
    private TimeSpan? _lastTunnelTrim;
    private int _tunnelPeak;  // the most tunnels open since the last trim
    private int _peak;
    private int _followUpAt = -1;
    private int _previous;
    private int _floor;   // the least held since the last trim: a burst that settles is measured from here
    private int _steady;  // checks in a row with what is held barely moved, above _floor + BurstThreshold

    /// <param name="period">How often to check; <see cref="Timeout.InfiniteTimeSpan"/> leaves it to <see cref="Check"/> calls.</param>
    /// <param name="now">The clock (tests); the process's monotonic clock by default.</param>
    /// <param name="buffers">The data buffers a trim lets go of (tests); <see cref="DataBuffers.Default"/> by default.</param>
    /// <param name="tunnels">HBONE tunnels open now, either way; none by default.</param>
    public HeapTrim(Func<int> held, TimeSpan period, Func<TimeSpan>? now = null, DataBuffers? buffers = null, Func<int>? tunnels = null)
    {
        _held = held;
        _tunnels = tunnels ?? (() => 0);
        _buffers = buffers ?? DataBuffers.Default;
        _now = now ?? (() => TimeSpan.FromMilliseconds(Environment.TickCount64));
        _timer = new Timer(_ => Check(), null, period, period);
    }

    /// <summary>True when this check collected.</summary>
    internal bool Check()
    {
        var tunnels = _tunnels();
        _tunnelPeak = Math.Max(_tunnelPeak, tunnels);
        var held = _held();
        var previous = _previous;
        _previous = held;
        _floor = Math.Min(_floor, held);
        if (held > _peak)
        {
            _peak = held;
            _followUpAt = -1;
            _steady = 0;
            return false;
        }

        // "Barely moved": within 1/64 of what is held, so connections coming and going around a held level settle too.
        if (held - _floor >= BurstThreshold && Math.Abs(held - previous) <= held / 64)
        {
            var now = _now();
            if (++_steady >= SettledChecks && IntervalPassed(_lastSettledTrim, now))
            {
                _lastSettledTrim = now;
                // what settled is held, not freed: nothing waits for a finalizer, one collection does
                Trim(held, tunnels, $"connection burst settled at {held}", afterFinalizers: false);
                return true;
            }
        }
        else
        {
            _steady = 0;
        }

        // The check after a trim trims once more if what is held fell further meanwhile: the last connections of a
        // burst (a flood's tunnels and their streams) often end within the second after the first trim, and an idle
        // agent allocates nothing that would collect them.
        if (_followUpAt >= 0)
        {
            var at = _followUpAt;
            _followUpAt = -1;
            if (held < at)
            {
                Trim(held, tunnels, "connection burst over, the rest of it", afterFinalizers: true);
                return true;
            }
        }

        if (_peak < BurstThreshold || held > _peak / 8)
        {
            return TunnelsClosed(held, tunnels);
        }

        _peak = held;
        _followUpAt = held;
        Trim(held, tunnels, "connection burst over", afterFinalizers: true);
        return true;
    }

    /// <summary>
    /// Tunnels a burst opened, closed once idle (minutes after its connections ended, when the trim for those has run):
    /// their TLS state (OpenSSL's, in glibc's arenas) and buffers stay resident until something collects and trims.
    /// </summary>
    private bool TunnelsClosed(int held, int tunnels)
    {
        if (_tunnelPeak - tunnels < TunnelBurstThreshold || tunnels > _tunnelPeak / 2)
        {
            return false;
        }

        var now = _now();
        if (!IntervalPassed(_lastTunnelTrim, now))
        {
            return false;
        }

        _lastTunnelTrim = now;
        Trim(held, tunnels, $"{_tunnelPeak - tunnels} tunnels closed", afterFinalizers: true);
        return true;
    }

    private static bool IntervalPassed(TimeSpan? last, TimeSpan now) => last is not { } at || now - at >= SettledInterval;

    /// <summary>
    /// Lets the idle data buffers go, collects and trims the native heap; a burst that settles next is measured from
    /// <paramref name="held"/>, tunnels that close next from <paramref name="tunnels"/>.
    /// </summary>
    private void Trim(int held, int tunnels, string why, bool afterFinalizers)
    {
        _floor = held;
        _steady = 0;
        _tunnelPeak = tunnels;
        var before = Environment.WorkingSet;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        // a burst fills the pool (every connection's first bytes took a buffer at once); the next bursts refill it
        var buffers = _buffers.Trim();
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        if (afterFinalizers)
        {
            GC.WaitForPendingFinalizers();
            // what the finalizers let go of (sockets', TLS sessions' handles) is only collected by the next collection
            GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        }

        TrimNativeHeap();
        Log.Info("agent", $"{why}: heap trimmed in {clock.ElapsedMilliseconds} ms ({buffers} idle data buffers let go), working set {before >> 20} MiB to {Environment.WorkingSet >> 20} MiB");
    }

    /// <summary>Returns the free pages of every malloc arena to the kernel; a no-op where libc has no malloc_trim.</summary>
    internal static void TrimNativeHeap()
    {
        try
        {
            MallocTrim(0);
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            // Not glibc (musl keeps little to trim): nothing to hand back this way.
        }
    }

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);

    public void Dispose() => _timer.Dispose();
}
