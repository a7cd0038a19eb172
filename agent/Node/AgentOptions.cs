using Weft.Identity;
using Weft.Inventory;
using Weft.Proxy;

namespace Weft.Node;

/// <summary>Everything the node agent is told at start.</summary>
internal sealed record AgentOptions
{
    public required string NodeName { get; init; }

    /// <summary>Standalone inventory file (Kubernetes objects as YAML), hot-reloaded; unused when <see cref="Kubernetes"/> is set.</summary>
    public string? InventoryPath { get; init; }

    /// <summary>Read the inventory from the Kubernetes API (watches) instead of a file.</summary>
    public KubernetesApiOptions? Kubernetes { get; init; }

    /// <summary>cgroup v2 directory whose processes are captured; null means the cgroup2 mount's root.</summary>
    public string? CgroupPath { get; init; }

    public string PinRoot { get; init; } = "/sys/fs/bpf/weft";

    /// <summary>Admin API (flows, config dump) address; null turns it off.</summary>
    public string? AdminAddress { get; init; } = "127.0.0.1:15000";

    /// <summary>Prometheus /metrics address ("host:port", ":port" for every address); null turns it off.</summary>
    public string? MetricsAddress { get; init; } = ":15020";

    /// <summary>Kubelet probes (/healthz, /ready); null turns them off.</summary>
    public string? HealthAddress { get; init; } = ":15021";

    public TimeSpan DrainGrace { get; init; } = TimeSpan.FromSeconds(20);

    /// <summary>Write a JSON access-log line per finished connection to stdout.</summary>
    public bool AccessLog { get; init; } = true;

    public Weft.Telemetry.AccessLogFormat AccessLogFormat { get; init; } = Weft.Telemetry.AccessLogFormat.Json;

    public ProxyOptions Proxy { get; init; } = new();

    /// <summary>Trust domain and CA files; null runs without mTLS (plaintext forwarding).</summary>
    public IdentityOptions? Identity { get; init; }
}
