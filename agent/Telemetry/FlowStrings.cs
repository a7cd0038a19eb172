using System.Collections.Concurrent;

namespace Weft.Telemetry;

/// <summary>
/// One shared instance of each name a flow record keeps (principals, workload names): ten thousand held connections
/// between the same two workloads otherwise keep ten thousand copies of the same few strings, about 300 bytes per
/// connection on each side (the load suite's heap dumps, docs/benchmark.md). Bounded: past <see cref="Capacity"/>
/// names a string is kept as given, so a stream of names never seen again cannot grow the table.
/// </summary>
internal static class FlowStrings
{
    public const int Capacity = 16_384;

    private static readonly ConcurrentDictionary<string, string> Names = new(StringComparer.Ordinal);

    /// <summary>Names held now; at most <see cref="Capacity"/>.</summary>
    public static int Count => Names.Count;

    /// <summary>The shared instance equal to <paramref name="value"/> (or <paramref name="value"/> itself).</summary>
    public static string Shared(string value)
    {
        if (Names.TryGetValue(value, out var shared))
        {
            return shared;
        }

        return Names.Count < Capacity ? Names.GetOrAdd(value, value) : value;
    }

    /// <summary><c>namespace/name</c>, shared.</summary>
    public static string Workload(string @namespace, string name) => Shared($"{@namespace}/{name}");
}
