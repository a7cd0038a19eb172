using System.Globalization;

namespace Weft.Telemetry;

/// <summary>
/// Which flows a user asked for, in the spirit of <c>hubble observe</c>. Every condition set must hold.
/// The same filter runs in the agent (admin API query) so a busy node sends only what matches.
/// </summary>
public sealed record FlowFilter
{
    /// <summary>"namespace/name": the pod at either end.</summary>
    public string? Pod { get; init; }

    public string? FromPod { get; init; }

    public string? ToPod { get; init; }

    /// <summary>The namespace of either end.</summary>
    public string? Namespace { get; init; }

    /// <summary>forwarded, denied, error, or a response flag such as UF or TLS_FAILURE.</summary>
    public string? Verdict { get; init; }

    /// <summary>Flows still open at, or started after, this moment.</summary>
    public DateTimeOffset? Since { get; init; }

    /// <summary>Only the N most recently started of the matches.</summary>
    public int? Last { get; init; }

    public static FlowFilter None { get; } = new();

    internal bool Matches(Flow flow) =>
        Matches(flow.SourceWorkload, flow.DestinationWorkload, flow.ResponseFlags, flow.Start, flow.End);

    public bool Matches(string? source, string? destination, string responseFlags, DateTimeOffset start, DateTimeOffset? end)
    {
        if (Pod is not null && Pod != source && Pod != destination)
        {
            return false;
        }

        if (FromPod is not null && FromPod != source)
        {
            return false;
        }

        if (ToPod is not null && ToPod != destination)
        {
            return false;
        }

        if (Namespace is not null && NamespaceOf(source) != Namespace && NamespaceOf(destination) != Namespace)
        {
            return false;
        }

        if (Verdict is not null
            && !string.Equals(Verdict, Flow.VerdictOf(responseFlags), StringComparison.OrdinalIgnoreCase)
            && !string.Equals(Verdict, responseFlags, StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }

        if (Since is { } since && start < since && end is { } finished && finished < since)
        {
            return false;
        }

        return true;
    }

    /// <summary>Applies the filter and then <see cref="Last"/> to flows in any order; the result is by start time.</summary>
    internal IReadOnlyList<T> Apply<T>(IEnumerable<T> flows, Func<T, Flow> flowOf) =>
        Apply(flows.Where(f => Matches(flowOf(f))), t => flowOf(t).Start, t => flowOf(t).Id);

    public IReadOnlyList<T> Apply<T>(IEnumerable<T> matching, Func<T, DateTimeOffset> start, Func<T, long> id)
    {
        var ordered = matching.OrderBy(start).ThenBy(id).ToList();
        return Last is { } last && ordered.Count > last ? ordered.GetRange(ordered.Count - last, last) : ordered;
    }

    private static string? NamespaceOf(string? pod) => pod is null ? null : pod.IndexOf('/') is var slash and > 0 ? pod[..slash] : null;

    /// <summary>"30s", "5m", "2h", "1d" back from <paramref name="now"/>, or an RFC 3339 time.</summary>
    public static DateTimeOffset ParseSince(string text, DateTimeOffset now)
    {
        if (text.Length >= 2 && double.TryParse(text[..^1], NumberStyles.Float, CultureInfo.InvariantCulture, out var amount) && amount >= 0)
        {
            TimeSpan? span = text[^1] switch
            {
                's' => TimeSpan.FromSeconds(amount),
                'm' => TimeSpan.FromMinutes(amount),
                'h' => TimeSpan.FromHours(amount),
                'd' => TimeSpan.FromDays(amount),
                _ => null,
            };
            if (span is { } s)
            {
                return now - s;
            }
        }

        if (DateTimeOffset.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var at))
        {
            return at;
        }

        throw new FormatException($"--since wants a duration such as 30s, 5m, 2h or a time such as 2025-01-02T15:04:05Z, got '{text}'");
    }

    /// <summary>The filter as admin API query parameters (since as Unix milliseconds, so clocks in text never get parsed twice).</summary>
    public string ToQuery()
    {
        var parts = new List<string>();
        void Add(string name, string? value)
        {
            if (value is not null)
            {
                parts.Add($"{name}={Uri.EscapeDataString(value)}");
            }
        }

        Add("pod", Pod);
        Add("from_pod", FromPod);
        Add("to_pod", ToPod);
        Add("namespace", Namespace);
        Add("verdict", Verdict);
        Add("since_ms", Since?.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture));
        Add("last", Last?.ToString(CultureInfo.InvariantCulture));
        return parts.Count == 0 ? "" : "?" + string.Join('&', parts);
    }

    /// <summary>Reads what <see cref="ToQuery"/> wrote.</summary>
    public static FlowFilter FromQuery(System.Collections.Specialized.NameValueCollection query)
    {
        static int? Int(string? s) => s is null ? null : int.Parse(s, CultureInfo.InvariantCulture);
        var sinceMs = query["since_ms"];
        return new FlowFilter
        {
            Pod = query["pod"],
            FromPod = query["from_pod"],
            ToPod = query["to_pod"],
            Namespace = query["namespace"],
            Verdict = query["verdict"],
            Since = sinceMs is null ? null : DateTimeOffset.FromUnixTimeMilliseconds(long.Parse(sinceMs, CultureInfo.InvariantCulture)),
            Last = Int(query["last"]),
        };
    }
}
