using System.Collections.Frozen;
using System.Collections.Immutable;
using System.Diagnostics.CodeAnalysis;
using System.Net;
using Weft.Policy;

namespace Weft.Inventory;

/// <summary>
/// Everything the data path needs to know about the cluster at one moment. Immutable: readers take
/// <see cref="InventoryStore.Current"/> once per connection and use it without locks while a newer
/// snapshot may already be published. Lookups allocate nothing.
/// </summary>
internal sealed class InventorySnapshot
{
    public static InventorySnapshot Empty { get; } = new(Indexes.Create([], [], [], [], PolicySet.Empty), version: 0, loadedAt: DateTimeOffset.MinValue);

    private readonly Indexes _indexes;

    private InventorySnapshot(Indexes indexes, long version, DateTimeOffset loadedAt)
    {
        _indexes = indexes;
        Version = version;
        LoadedAt = loadedAt;
    }

    /// <summary>Assigned by <see cref="InventoryStore.Publish"/>: 0 until published, then strictly increasing.</summary>
    public long Version { get; }

    /// <summary>When the store published this snapshot.</summary>
    public DateTimeOffset LoadedAt { get; }

    public ImmutableArray<MeshNamespace> Namespaces => _indexes.Namespaces;

    public ImmutableArray<Workload> Workloads => _indexes.Workloads;

    public ImmutableArray<Service> Services => _indexes.Services;

    /// <summary>Objects the builder skipped or partly ignored, each naming the object and the reason.</summary>
    public ImmutableArray<string> Warnings => _indexes.Warnings;

    /// <summary>Compiled AuthorizationPolicies and PeerAuthentications; decide with <see cref="Authorizer"/>.</summary>
    public PolicySet Policies => _indexes.Policies;

    /// <summary>The workload that owns a pod IP (IPv4-mapped IPv6 addresses match their IPv4 form).</summary>
    public bool TryGetWorkload(IPAddress address, [NotNullWhen(true)] out Workload? workload)
    {
        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }

        return _indexes.WorkloadsByIp.TryGetValue(address, out workload);
    }

    /// <summary>
    /// Whether the address is a node's: every pod reports its node's (status.hostIPs), and host-network
    /// pods share them.
    /// </summary>
    public bool IsNodeAddress(IPAddress address)
    {
        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }

        return _indexes.NodeAddresses.Contains(address);
    }

    /// <summary>The enrolled pods on a node: those the agent on that node captures.</summary>
    public ImmutableArray<Workload> GetLocalEnrolledWorkloads(string nodeName) =>
        _indexes.EnrolledByNode.TryGetValue(nodeName, out var workloads) ? workloads : [];

    public bool TryGetNamespace(string name, [NotNullWhen(true)] out MeshNamespace? meshNamespace) =>
        _indexes.NamespacesByName.TryGetValue(name, out meshNamespace);

    public bool TryGetService(string @namespace, string name, [NotNullWhen(true)] out Service? service) =>
        _indexes.ServicesByName.TryGetValue((@namespace, name), out service);

    /// <summary>
    /// Resolves a service VIP (cluster IP and service port, TCP) to the service and its ready endpoints.
    /// False when the address is no service's VIP: the connection goes to its original destination.
    /// True with no ready endpoints when the service exists but nothing serves it.
    /// </summary>
    public bool TryResolveService(IPEndPoint vip, [NotNullWhen(true)] out ServiceTarget? target)
    {
        if (vip.Address.IsIPv4MappedToIPv6)
        {
            vip = new IPEndPoint(vip.Address.MapToIPv4(), vip.Port);
        }

        return _indexes.TargetsByVip.TryGetValue(vip, out target);
    }

    internal static InventorySnapshot Create(
        ImmutableArray<MeshNamespace> namespaces,
        ImmutableArray<Workload> workloads,
        ImmutableArray<Service> services,
        ImmutableArray<string> warnings,
        PolicySet? policies = null) =>
        new(Indexes.Create(namespaces, workloads, services, warnings, policies ?? PolicySet.Empty), version: 0, loadedAt: DateTimeOffset.MinValue);

    internal InventorySnapshot WithVersion(long version, DateTimeOffset loadedAt) => new(_indexes, version, loadedAt);

    /// <summary>The contents and the lookup tables built from them once, shared by every version that carries them.</summary>
    private sealed class Indexes
    {
        public required ImmutableArray<MeshNamespace> Namespaces { get; init; }
        public required ImmutableArray<Workload> Workloads { get; init; }
        public required ImmutableArray<Service> Services { get; init; }
        public required ImmutableArray<string> Warnings { get; init; }
        public required PolicySet Policies { get; init; }
        public required FrozenDictionary<string, MeshNamespace> NamespacesByName { get; init; }
        public required FrozenDictionary<IPAddress, Workload> WorkloadsByIp { get; init; }
        public required FrozenSet<IPAddress> NodeAddresses { get; init; }
        public required FrozenDictionary<string, ImmutableArray<Workload>> EnrolledByNode { get; init; }
        public required FrozenDictionary<(string Namespace, string Name), Service> ServicesByName { get; init; }
        public required FrozenDictionary<IPEndPoint, ServiceTarget> TargetsByVip { get; init; }

        public static Indexes Create(
            ImmutableArray<MeshNamespace> namespaces,
            ImmutableArray<Workload> workloads,
            ImmutableArray<Service> services,
            ImmutableArray<string> warnings,
            PolicySet policies)
        {
            // The builder guarantees unique names and addresses; first one wins here only as a last line of defence.
            var byIp = new Dictionary<IPAddress, Workload>();
            var nodeAddresses = new HashSet<IPAddress>();
            var byNode = new Dictionary<string, ImmutableArray<Workload>.Builder>(StringComparer.Ordinal);
            foreach (var workload in workloads)
            {
                if (!workload.HostNetwork)
                {
                    foreach (var address in workload.Addresses)
                    {
                        byIp.TryAdd(address, workload);
                    }
                }
                else
                {
                    nodeAddresses.UnionWith(workload.Addresses);
                }

                nodeAddresses.UnionWith(workload.HostAddresses);

                if (workload.Enrolled && workload.NodeName is { } node)
                {
                    if (!byNode.TryGetValue(node, out var list))
                    {
                        byNode[node] = list = ImmutableArray.CreateBuilder<Workload>();
                    }

                    list.Add(workload);
                }
            }

            var namespacesByName = new Dictionary<string, MeshNamespace>(StringComparer.Ordinal);
            foreach (var ns in namespaces)
            {
                namespacesByName.TryAdd(ns.Name, ns);
            }

            var servicesByName = new Dictionary<(string, string), Service>();
            var targets = new Dictionary<IPEndPoint, ServiceTarget>();
            foreach (var service in services)
            {
                servicesByName.TryAdd((service.Namespace, service.Name), service);
                foreach (var clusterIp in service.ClusterIps)
                {
                    foreach (var port in service.Ports)
                    {
                        if (port.Protocol != "TCP")
                        {
                            continue; // capture steers TCP connects only; a UDP port may share the number
                        }

                        var vip = new IPEndPoint(clusterIp, port.Port);
                        var ready = ServiceResolution.ReadyEndpoints(service, port, clusterIp.AddressFamily);
                        targets.TryAdd(vip, new ServiceTarget(service, port, vip, ready));
                    }
                }
            }

            return new Indexes
            {
                Namespaces = namespaces,
                Workloads = workloads,
                Services = services,
                Warnings = warnings,
                Policies = policies,
                NamespacesByName = namespacesByName.ToFrozenDictionary(StringComparer.Ordinal),
                WorkloadsByIp = byIp.ToFrozenDictionary(),
                NodeAddresses = nodeAddresses.ToFrozenSet(),
                EnrolledByNode = byNode.ToFrozenDictionary(p => p.Key, p => p.Value.ToImmutable(), StringComparer.Ordinal),
                ServicesByName = servicesByName.ToFrozenDictionary(),
                TargetsByVip = targets.ToFrozenDictionary(),
            };
        }
    }
}
