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
    public static long Current => GetRlimit(RlimitNofile, out var limit) == 0 ? Clamp(limit.Current) : 1024;

    /// <summary>Raises the soft limit to the hard limit; returns the soft limit in force afterwards (and the hard one).</summary>
    public static (long Soft, long Hard) RaiseToHard()
    {
        if (GetRlimit(RlimitNofile, out var limit) != 0)
        {
            Log.Warn("agent", $"getrlimit(RLIMIT_NOFILE) failed (errno {Marshal.GetLastPInvokeError()}); assuming 1024 descriptors");
            return (1024, 1024);
        }

        if (limit.Current < limit.Maximum)
        {
            var raised = limit with { Current = limit.Maximum };
            if (SetRlimit(RlimitNofile, raised) == 0)
            {
                limit = raised;
            }
            else
            {
                Log.Warn("agent", $"setrlimit(RLIMIT_NOFILE, {limit.Maximum}) failed (errno {Marshal.GetLastPInvokeError()}); keeping {limit.Current}");
            }
        }

        return (Clamp(limit.Current), Clamp(limit.Maximum));
    }

    // RLIM_INFINITY is all ones; no kernel hands out more descriptors than fs.nr_open (at most 2^30).
    private static long Clamp(ulong value) => (long)Math.Min(value, 1UL << 30);
}
