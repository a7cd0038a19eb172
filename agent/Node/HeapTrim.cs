using System.Runtime;
using System.Runtime.InteropServices;

namespace Weft.Node;

/// <summary>
/// Gives memory back to the kernel after a burst of connections (inbound or outbound) ends. An agent that
/// goes idle allocates nothing, so no collection would run and the heap grown for thousands of connections
/// (their buffers and records) would stay resident: after a flood, RSS would not come back. The native heap
/// (OpenSSL's and the runtime's own allocations, in glibc's arenas) keeps its freed pages too until
/// <c>malloc_trim</c> hands them back. Checked once a second; collects when what is held fell to an eighth of its
/// peak, and once more at the next check if it fell further.
/// </summary>
internal sealed partial class HeapTrim : IDisposable
{
    /// <summary>Bursts smaller than this are ordinary traffic; the GC's own pace is fine for them.</summary>
    public const int BurstThreshold = 1000;

    private readonly Func<int> _held;
    private readonly Timer _timer;
    private int _peak;
    private int _followUpAt = -1;

    /// <param name="period">How often to check; <see cref="Timeout.InfiniteTimeSpan"/> leaves it to <see cref="Check"/> calls.</param>
    public HeapTrim(Func<int> held, TimeSpan period)
    {
        _held = held;
        _timer = new Timer(_ => Check(), null, period, period);
    }

    /// <summary>True when this check collected.</summary>
    internal bool Check()
    {
        var held = _held();
        if (held > _peak)
        {
            _peak = held;
            _followUpAt = -1;
            return false;
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
                Trim("connection burst over, the rest of it");
                return true;
            }
        }

        if (_peak < BurstThreshold || held > _peak / 8)
        {
            return false;
        }

        _peak = held;
        _followUpAt = held;
        Trim("connection burst over");
        return true;
    }

    private static void Trim(string why)
    {
        var before = Environment.WorkingSet;
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        // what the finalizers let go of (sockets', TLS sessions' handles) is only collected by the next collection
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        TrimNativeHeap();
        Log.Info("agent", $"{why}: heap trimmed, working set {before >> 20} MiB to {Environment.WorkingSet >> 20} MiB");
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
