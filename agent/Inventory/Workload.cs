using System.Collections.Immutable;
using System.Net;
using System.Net.Sockets;

namespace Weft.Inventory;

/// <summary>
/// A pod as the mesh sees it: who it is (namespace, service account), where it runs, how to reach it,
/// and whether the agent on its node captures its traffic.
/// </summary>
internal sealed record Workload
{
    public required string Name { get; init; }

    public required string Namespace { get; init; }

    /// <summary>Kubernetes runs a pod without spec.serviceAccountName as "default"; identity follows that.</summary>
    public required string ServiceAccount { get; init; }

    public string? NodeName { get; init; }

    /// <summary>status.podIPs (or status.podIP), at most one per family in Kubernetes, in the order given.</summary>
    public required ImmutableArray<IPAddress> Addresses { get; init; }

    public required IReadOnlyDictionary<string, string> Labels { get; init; }

    /// <summary>Path of the pod's network namespace (annotation weft.dev/netns); standalone inventories only: the Kubernetes
    /// source drops the annotation, and the node finds a local pod's namespace from its cgroup (<see cref="Uid"/>).</summary>
    public string? NetnsPath { get; init; }

    private readonly CompactId _uid;

    /// <summary>metadata.uid: names the pod's cgroup on its node. Held compactly (a GUID as 16 bytes), given back as written.</summary>
    public string? Uid { get => _uid.Text; init => _uid = CompactId.Of(value); }

    /// <summary>Whether both have the same uid, without spelling either out.</summary>
    public bool SameUid(Workload other) => _uid == other._uid;

    /// <summary>status.qosClass (Guaranteed, Burstable, BestEffort), as the cluster says it; decides the level of the pod's cgroup.</summary>
    public string? QosClass { get; init; }

    /// <summary>status.phase as the cluster says it; a Succeeded or Failed pod has no live process to name its namespace.</summary>
    public string? Phase { get; init; }

    /// <summary>Annotation weft.dev/fail-open: when capture breaks, let traffic pass in plaintext instead of refusing it.</summary>
    public bool FailOpen { get; init; }

    /// <summary>Namespace label weft.dev/mesh=enabled, overridden by the pod label weft.dev/mesh=enabled|disabled.</summary>
    public bool Enrolled { get; init; }

    /// <summary>A host-network pod shares the node's addresses: it is never enrolled and never indexed by IP.</summary>
    public bool HostNetwork { get; init; }

    /// <summary>status.hostIPs (or status.hostIP): the addresses of the node the pod runs on.</summary>
    public ImmutableArray<IPAddress> HostAddresses { get; init; } = [];

    public IPAddress? Ipv4 => FirstOf(AddressFamily.InterNetwork);

    public IPAddress? Ipv6 => FirstOf(AddressFamily.InterNetworkV6);

    /// <summary>The workload's SPIFFE ID: spiffe://&lt;trust domain&gt;/ns/&lt;namespace&gt;/sa/&lt;service account&gt;.</summary>
    public string SpiffeId(string trustDomain)
    {
        ArgumentException.ThrowIfNullOrEmpty(trustDomain);
        return $"spiffe://{trustDomain}/ns/{Namespace}/sa/{ServiceAccount}";
    }

    public override string ToString() => $"{Namespace}/{Name}";

    private IPAddress? FirstOf(AddressFamily family)
    {
        foreach (var address in Addresses)
        {
            if (address.AddressFamily == family)
            {
                return address;
            }
        }

        return null;
    }
}

/// <summary>A namespace and whether its label enrolls its pods in the mesh.</summary>
internal sealed record MeshNamespace(string Name, IReadOnlyDictionary<string, string> Labels, bool Enrolled);
