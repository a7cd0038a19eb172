using System.Runtime.InteropServices;

namespace Weft.Node;

/// <summary>
/// The process's open-file limit (RLIMIT_NOFILE). The agent holds a descriptor per connection, so it
/// takes all the kernel lets it have (soft limit up to the hard limit) and sizes its inbound limits from it.
/// </summary>
internal static partial class DescriptorLimit
{
    private const int RlimitNofile = 7;

    [StructLayout(LayoutKind.Sequential)]
    private struct Rlimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    [LibraryImport("libc", EntryPoint = "getrlimit", SetLastError = true)]
    private static partial int GetRlimit(int resource, out Rlimit limit);

    [LibraryImport("libc", EntryPoint = "setrlimit", SetLastError = true)]
    private static partial int SetRlimit(int resource, in Rlimit limit);

    /// <summary>The soft limit now.</summary>
    public static long Current => Get() is { } limit ? Clamp(limit.Soft) : 1024;

    /// <summary>The soft and hard limits, or null when the kernel will not say.</summary>
    public static (ulong Soft, ulong Hard)? Get() =>
        GetRlimit(RlimitNofile, out var limit) == 0 ? (limit.Current, limit.Maximum) : null;

    /// <summary>Sets both limits; raising the hard one needs CAP_SYS_RESOURCE.</summary>
    public static bool TrySet(ulong soft, ulong hard) => SetRlimit(RlimitNofile, new Rlimit { Current = soft, Maximum = hard }) == 0;

    /// <summary>Raises the soft limit to the hard limit; returns the soft limit in force afterwards (and the hard one).</summary>
    public static (long Soft, long Hard) RaiseToHard()
    {
        if (Get() is not { } limit)
        {
            Log.Warn("agent", $"getrlimit(RLIMIT_NOFILE) failed (errno {Marshal.GetLastPInvokeError()}); assuming 1024 descriptors");
            return (1024, 1024);
        }

        if (limit.Soft < limit.Hard)
        {
            if (TrySet(limit.Hard, limit.Hard))
            {
                limit = (limit.Hard, limit.Hard);
            }
            else
            {
                Log.Warn("agent", $"setrlimit(RLIMIT_NOFILE, {limit.Hard}) failed (errno {Marshal.GetLastPInvokeError()}); keeping {limit.Soft}");
            }
        }

        return (Clamp(limit.Soft), Clamp(limit.Hard));
    }

    // RLIM_INFINITY is all ones; no kernel hands out more descriptors than fs.nr_open (at most 2^30).
    private static long Clamp(ulong value) => (long)Math.Min(value, 1UL << 30);
}
