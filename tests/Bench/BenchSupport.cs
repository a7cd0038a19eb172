using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Weft.Cli;
using Weft.Node;

namespace Weft.Bench;

/// <summary>Records and helpers of <c>weft-bench</c>: what /proc says, the open-file limit, medians, formatting.</summary>
internal static partial class BenchCommand
{
    private sealed record Iperf(double Gbps, long Retransmits);

    private sealed record Connections(double PerSecond, long Failed);

    private sealed record Latency(double P50, double P99, double? P999, long Observations)
    {
        public JsonObject ToJson() => new()
        {
            ["p50"] = Round(P50, 1),
            ["p99"] = Round(P99, 1),
            ["p99_9"] = P999 is { } p ? Round(p, 1) : null,
            ["observations"] = Observations,
        };

        /// <summary>Percentile by percentile, the median over runs.</summary>
        public static Latency Median(IReadOnlyList<Latency> runs) => new(
            BenchCommand.Median(runs.Select(r => r.P50)),
            BenchCommand.Median(runs.Select(r => r.P99)),
            runs.All(r => r.P999.HasValue) ? BenchCommand.Median(runs.Select(r => r.P999!.Value)) : null,
            runs.Sum(r => r.Observations));
    }

    /// <summary>What /proc says about a process: memory as the kernel counts it, descriptors, threads, CPU.</summary>
    internal sealed record ProcStatus(string Command, long RssKib, long RssAnonKib, int Threads, int Fds)
    {
        public static ProcStatus Read(int pid)
        {
            var fields = ProcStatusFields.Read(pid);
            long Kib(string name) => ProcStatusFields.Kib(fields, name);
            return new ProcStatus(fields["Name"], Kib("VmRSS"), Kib("RssAnon"), int.Parse(fields["Threads"], CultureInfo.InvariantCulture),
                Directory.GetFiles($"/proc/{pid}/fd").Length);
        }

        /// <summary>User plus system CPU time of the whole process (all threads) so far.</summary>
        public static double CpuSeconds(int pid)
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');

            // fields after the command: state is [0], utime is field 14 of the whole line, so [11]; stime [12]
            var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
            return ticks / (double)ClockTicksPerSecond;
        }
    }

    /// <summary>CPU time every process that ever ran in a cgroup (v2) has used, from its cpu.stat.</summary>
    private static double CgroupCpuSeconds(string cgroupPath)
    {
        foreach (var line in File.ReadLines(Path.Join(cgroupPath, "cpu.stat")))
        {
            if (line.StartsWith("usage_usec ", StringComparison.Ordinal))
            {
                return long.Parse(line.AsSpan("usage_usec ".Length), CultureInfo.InvariantCulture) / 1e6;
            }
        }

        throw new InvalidDataException($"{cgroupPath}/cpu.stat has no usage_usec");
    }

    // sysconf(_SC_CLK_TCK) is 100 on every Linux the agent targets (USER_HZ is fixed by the ABI)
    private const int ClockTicksPerSecond = 100;

    // descriptors an agent needs besides its proxied connections (listeners, pins, runtime), with room to spare
    private const ulong FdHeadroom = 400;

    /// <summary>Raises this process's open-file limit (children inherit it) towards <paramref name="wanted"/>; returns the limit now in force.</summary>
    internal static ulong RaiseOpenFileLimit(ulong wanted)
    {
        if (DescriptorLimit.Get() is not { } limit)
        {
            return 1024;
        }

        if (limit.Soft >= wanted)
        {
            return limit.Soft;
        }

        // root may raise the hard limit too, given CAP_SYS_RESOURCE; otherwise settle for the hard limit
        if (DescriptorLimit.TrySet(wanted, Math.Max(wanted, limit.Hard)))
        {
            return wanted;
        }

        return DescriptorLimit.TrySet(limit.Hard, limit.Hard) ? limit.Hard : limit.Soft;
    }

    private static bool OnPath(string tool) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(dir => dir.Length > 0 && File.Exists(Path.Join(dir, tool)));

    /// <summary>The 1-minute load average: other work on the machine shares the CPUs the benchmark measures.</summary>
    private static double LoadAverage() =>
        double.Parse(File.ReadAllText("/proc/loadavg").Split(' ')[0], CultureInfo.InvariantCulture);

    internal static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    private static string Samples(IEnumerable<double> values, string format = "0.00") =>
        string.Join(" / ", values.Select(v => v.ToString(format, CultureInfo.InvariantCulture)));

    private static JsonArray Array(IEnumerable<JsonNode?> values) => new(values.ToArray());

    private static JsonArray Array(IEnumerable<double> values) => new(values.Select(v => (JsonNode?)v).ToArray());

    private static double Round(double value, int digits) => Math.Round(value, digits);

    private static string Added(double ms) => ms.ToString("+0.000;-0.000", CultureInfo.InvariantCulture) + " ms";

    internal static string Mib(long kib) => string.Create(CultureInfo.InvariantCulture, $"{kib / 1024.0:0.0} MiB");

    private static string Tail(string text) => text.Length <= 2000 ? text : "..." + text[^2000..];

    private static void Say(string text) => Console.WriteLine($"\n== {text}");

    [GeneratedRegex(@"\x1b\[[0-9;]*m")]
    private static partial Regex AnsiEscape();
}

/// <summary>/proc/PID/status as field name to value, the value as the kernel writes it ("1234 kB", "21").</summary>
internal static class ProcStatusFields
{
    public static Dictionary<string, string> Read(int pid) =>
        File.ReadAllLines($"/proc/{pid}/status")
            .Select(l => l.Split(':', 2))
            .Where(p => p.Length == 2)
            .ToDictionary(p => p[0], p => p[1].Trim());

    /// <summary>A memory field ("VmRSS", "RssAnon"...) in KiB.</summary>
    public static long Kib(IReadOnlyDictionary<string, string> fields, string name) =>
        long.Parse(fields[name].Split(' ')[0], CultureInfo.InvariantCulture);
}
