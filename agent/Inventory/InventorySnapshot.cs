using System.Collections.Immutable;
using System.Diagnostics.CodeAnalysis;
using System.Net;
using Weft.Policy;

namespace Weft.Inventory;

/// <summary>
/// Everything the data path needs to know about the cluster at one moment. Immutable: readers take
/// <see cref="InventoryStore.Current"/> once per connection and use it without locks while a newer
/// snapshot may already be published. Lookups allocate nothing. Made by <see cref="InventoryState"/>, which shares
/// every table entry an update did not touch with the previous snapshot.
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

    /// <summary>How many workloads (without making the <see cref="Workloads"/> array, which costs O(pods) once per snapshot).</summary>
    public int WorkloadCount => _indexes.WorkloadCount;

    /// <summary>How many services, without making the <see cref="Services"/> array.</summary>
    public int ServiceCount => _indexes.ServiceCount;

    /// <summary>How many warnings, without making the <see cref="Warnings"/> array.</summary>
    public int WarningCount => _indexes.WarningCount;

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

    /// <summary>A snapshot over <see cref="InventoryState"/>'s persistent maps; the arrays are made from them on first use.</summary>
    internal static InventorySnapshot FromState(
        ImmutableSortedDictionary<string, MeshNamespace> namespaces,
        ImmutableSortedDictionary<(string, string), Workload> workloads,
        ImmutableDictionary<IPAddress, Workload> workloadsByIp,
        ImmutableHashSet<IPAddress> nodeAddresses,
        ImmutableDictionary<string, ImmutableArray<Workload>> enrolledByNode,
        ImmutableSortedDictionary<(string, string), Service> services,
        ImmutableDictionary<IPEndPoint, ServiceTarget> targets,
        ImmutableSortedDictionary<long, ImmutableArray<string>> objectWarnings,
        ImmutableArray<string> policyWarnings,
        PolicySet policies) =>
        new(new Indexes(
            new Lazy<ImmutableArray<MeshNamespace>>(() => [.. namespaces.Values]),
            new Lazy<ImmutableArray<Workload>>(() => [.. workloads.Values]),
            new Lazy<ImmutableArray<Service>>(() => [.. services.Values]),
            new Lazy<ImmutableArray<string>>(() => [.. objectWarnings.Values.SelectMany(w => w), .. policyWarnings]))
        {
            WorkloadCount = workloads.Count,
            ServiceCount = services.Count,
            WarningCount = objectWarnings.Values.Sum(w => w.Length) + policyWarnings.Length,
            Policies = policies,
            NamespacesByName = namespaces,
            WorkloadsByIp = workloadsByIp,
            NodeAddresses = nodeAddresses,
            EnrolledByNode = enrolledByNode,
            ServicesByName = services,
            TargetsByVip = targets,
        }, version: 0, loadedAt: DateTimeOffset.MinValue);

    internal InventorySnapshot WithVersion(long version, DateTimeOffset loadedAt) => new(_indexes, version, loadedAt);

    /// <summary>
    /// The contents and their lookup tables, shared by every version that carries them. The tables are persistent
    /// maps: the next snapshot of an incremental inventory shares every entry that did not change. The arrays
    /// (for listings, not the data path) are made once, when first read.
    /// </summary>
    private sealed class Indexes(
        Lazy<ImmutableArray<MeshNamespace>> namespaces,
        Lazy<ImmutableArray<Workload>> workloads,
        Lazy<ImmutableArray<Service>> services,
        Lazy<ImmutableArray<string>> warnings)
    {
        public ImmutableArray<MeshNamespace> Namespaces => namespaces.Value;

        public ImmutableArray<Workload> Workloads => workloads.Value;

        public ImmutableArray<Service> Services => services.Value;

        public ImmutableArray<string> Warnings => warnings.Value;

        public required int WorkloadCount { get; init; }

        public required int ServiceCount { get; init; }

        public required int WarningCount { get; init; }

        public required PolicySet Policies { get; init; }

        public required ImmutableSortedDictionary<string, MeshNamespace> NamespacesByName { get; init; }

        public required ImmutableDictionary<IPAddress, Workload> WorkloadsByIp { get; init; }

        public required ImmutableHashSet<IPAddress> NodeAddresses { get; init; }

        public required ImmutableDictionary<string, ImmutableArray<Workload>> EnrolledByNode { get; init; }

        public required ImmutableSortedDictionary<(string, string), Service> ServicesByName { get; init; }

        public required ImmutableDictionary<IPEndPoint, ServiceTarget> TargetsByVip { get; init; }

        /// <summary>Tables over arrays given whole (tests): first one wins where two claim a name or an address.</summary>
        public static Indexes Create(
            ImmutableArray<MeshNamespace> namespaces,
            ImmutableArray<Workload> workloads,
            ImmutableArray<Service> services,
            ImmutableArray<string> warnings,
            PolicySet policies)
        {
            var byIp = ImmutableDictionary.CreateBuilder<IPAddress, Workload>();
            var nodeAddresses = ImmutableHashSet.CreateBuilder<IPAddress>();
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

            var namespacesByName = ImmutableSortedDictionary.CreateBuilder<string, MeshNamespace>(StringComparer.Ordinal);
            foreach (var ns in namespaces)
            {
                namespacesByName.TryAdd(ns.Name, ns);
            }

            var servicesByName = ImmutableSortedDictionary.CreateBuilder<(string, string), Service>(NameComparer.Instance);
            var targets = ImmutableDictionary.CreateBuilder<IPEndPoint, ServiceTarget>();
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
                        if (!targets.ContainsKey(vip))
                        {
                            targets[vip] = new ServiceTarget(service, port, vip, ServiceResolution.ReadyEndpoints(service, port, clusterIp.AddressFamily));
                        }
                    }
                }
            }

            return new Indexes(new(() => namespaces), new(() => workloads), new(() => services), new(() => warnings))
            {
                WorkloadCount = workloads.Length,
                ServiceCount = services.Length,
                WarningCount = warnings.Length,
                Policies = policies,
                NamespacesByName = namespacesByName.ToImmutable(),
                WorkloadsByIp = byIp.ToImmutable(),
                NodeAddresses = nodeAddresses.ToImmutable(),
                EnrolledByNode = byNode.ToImmutableDictionary(p => p.Key, p => p.Value.ToImmutable(), StringComparer.Ordinal),
                ServicesByName = servicesByName.ToImmutable(),
                TargetsByVip = targets.ToImmutable(),
            };
        }
    }
}
