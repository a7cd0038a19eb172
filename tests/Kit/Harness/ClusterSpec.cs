using System.Text.RegularExpressions;

namespace Weft.Harness;

/// <summary>What to build: nodes in order (node k gets underlay 172.31.0.k and pod CIDR 10.244.k.0/24) and their pods.</summary>
internal sealed record ClusterSpec(IReadOnlyList<NodeSpec> Nodes)
{
    public ClusterSpec(params NodeSpec[] nodes)
        : this((IReadOnlyList<NodeSpec>)nodes)
    {
    }

    /// <summary>Tear the cluster down on SIGINT (Ctrl-C), SIGTERM, SIGHUP and process exit (so `weft-kit demo` leaves nothing behind).</summary>
    public bool TeardownOnExit { get; init; } = true;

    /// <summary>On dispose, processes get SIGTERM and this long to exit before SIGKILL.</summary>
    public TimeSpan StopGracePeriod { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>Test hook: throw when the build reaches this step (e.g. "node:node2", "pod:node2/demo/b1", "routes").</summary>
    internal string? FailAtStep { get; init; }
}

/// <summary>A node: its own network namespace on the underlay bridge, and its pods.</summary>
internal sealed record NodeSpec(string Name, IReadOnlyList<PodSpec> Pods)
{
    public NodeSpec(string name, params PodSpec[] pods)
        : this(name, (IReadOnlyList<PodSpec>)pods)
    {
    }
}

/// <summary>
/// A pod. App defaults to the name without trailing digits ("b1" → "b"); labels default to
/// {app: App} and the service account to App, the way a Deployment's pods would look.
/// </summary>
internal sealed record PodSpec(string Namespace, string Name)
{
    public string? ServiceAccount { get; init; }

    public IReadOnlyDictionary<string, string>? Labels { get; init; }

    /// <summary>Extra pod annotations for the inventory, e.g. weft.dev/fail-open.</summary>
    public IReadOnlyDictionary<string, string>? Annotations { get; init; }

    public string App => Name.TrimEnd('0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '-') is { Length: > 0 } app ? app : Name;
}

internal static partial class ClusterNames
{
    /// <summary>DNS-1123 labels, as Kubernetes requires for node, namespace and pod names.</summary>
    public static void Validate(string kind, string name)
    {
        if (name.Length is 0 or > 63 || !Dns1123().IsMatch(name))
        {
            throw new ArgumentException($"{kind} name '{name}' must be a DNS-1123 label (lowercase letters, digits, '-', at most 63 chars)");
        }
    }

    [GeneratedRegex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    private static partial Regex Dns1123();
}
