using System.Collections.Immutable;
using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using k8s;
using k8s.Models;
using Weft.Policy;

namespace Weft.Inventory;

/// <summary>
/// The one path from Kubernetes objects to an <see cref="InventorySnapshot"/>. The standalone file and the
/// Kubernetes watches both hand their objects here, so a file behaves exactly like a cluster would.
/// <code>
///   Namespace ─┐
///   Pod ───────┼─► validate each object (skip the unusable ones, with a warning naming them)
///   Service ───┤      └─► join EndpointSlices to Services by kubernetes.io/service-name
///   EndpointSlice ┘          └─► InventorySnapshot (indexes by IP, node, VIP)
///   AuthorizationPolicy, PeerAuthentication (weft.dev/v1alpha1) ─► PolicyCompiler ─► snapshot.Policies
///   anything else ─► ignored with a debug note (ingresses come later)
/// </code>
/// </summary>
internal static class InventoryBuilder
{
    public const string MeshLabel = "weft.dev/mesh";
    public const string NetnsAnnotation = "weft.dev/netns";
    public const string FailOpenAnnotation = "weft.dev/fail-open";
    public const string ServiceNameLabel = "kubernetes.io/service-name";

    /// <summary>
    /// Builds an unpublished snapshot (version 0). Objects that cannot be used are left out and described in
    /// <see cref="InventorySnapshot.Warnings"/>; this method does not log them, so a caller that rebuilds
    /// often can decide what is news.
    /// </summary>
    public static InventorySnapshot Build(IEnumerable<IKubernetesObject> objects) =>
        Build(objects, PolicyKinds.DefaultMeshRootNamespace);

    /// <inheritdoc cref="Build(IEnumerable{IKubernetesObject})"/>
    /// <param name="objects">The objects, in any order.</param>
    /// <param name="meshRootNamespace">Where policies without a selector apply mesh-wide (Istio's root namespace).</param>
    public static InventorySnapshot Build(IEnumerable<IKubernetesObject> objects, string meshRootNamespace)
    {
        ArgumentNullException.ThrowIfNull(objects);
        ArgumentException.ThrowIfNullOrEmpty(meshRootNamespace);
        var build = new BuildState(meshRootNamespace);
        foreach (var obj in objects)
        {
            switch (obj)
            {
                case null:
                    break;
                case V1Namespace ns:
                    build.Add(ns);
                    break;
                case V1Pod pod:
                    build.AddOrDefer(pod);
                    break;
                case V1Service service:
                    build.Add(service);
                    break;
                case V1EndpointSlice slice:
                    build.Add(slice);
                    break;
                case V1Alpha1AuthorizationPolicy policy:
                    build.AuthorizationPolicies.Add(policy);
                    break;
                case V1Alpha1PeerAuthentication peerAuthentication:
                    build.PeerAuthentications.Add(peerAuthentication);
                    break;
                default:
                    Log.Debug("inventory", $"ignoring {Describe(obj)}: the inventory does not use this kind yet");
                    break;
            }
        }

        // Deferred pods last: their enrollment depends on their namespace, wherever it appears in the input.
        foreach (var pod in build.Pods)
        {
            build.Add(pod);
        }

        return build.ToSnapshot();
    }

    private sealed class BuildState(string meshRootNamespace)
    {
        public readonly List<V1Pod> Pods = [];
        public readonly List<V1Alpha1AuthorizationPolicy> AuthorizationPolicies = [];
        public readonly List<V1Alpha1PeerAuthentication> PeerAuthentications = [];
        private readonly List<string> _warnings = [];
        private readonly InternPool _pool = new();
        private readonly Dictionary<string, MeshNamespace> _namespaces = new(StringComparer.Ordinal);
        private readonly List<Workload> _workloads = [];
        private readonly HashSet<(string, string)> _workloadNames = [];
        private readonly Dictionary<IPAddress, Workload> _workloadIps = [];
        private readonly Dictionary<(string Namespace, string Name), Service> _services = [];
        private readonly List<(string Namespace, string ServiceName, ServiceEndpoint Endpoint)> _endpoints = [];

        /// <summary>
        /// A pod whose namespace has been seen (files and the Kubernetes source give namespaces first) becomes a
        /// workload at once, so a large input never holds all its pod objects; until one pod has to wait for its
        /// namespace, after which every later pod waits too, keeping the input's order for duplicates.
        /// </summary>
        public void AddOrDefer(V1Pod pod)
        {
            var ns = string.IsNullOrEmpty(pod.Metadata?.NamespaceProperty) ? "default" : pod.Metadata.NamespaceProperty;
            if (Pods.Count == 0 && _namespaces.ContainsKey(ns))
            {
                Add(pod);
            }
            else
            {
                Pods.Add(pod);
            }
        }

        public void Add(V1Namespace ns)
        {
            var name = ns.Metadata?.Name;
            if (string.IsNullOrEmpty(name))
            {
                Warn("Namespace without metadata.name skipped");
                return;
            }

            name = _pool.String(name);
            var labels = _pool.Labels(ns.Metadata?.Labels);
            var meshNamespace = new MeshNamespace(name, labels, labels.TryGetValue(MeshLabel, out var mesh) && mesh == "enabled");
            if (!_namespaces.TryAdd(name, meshNamespace))
            {
                Warn($"Namespace {name} appears twice; the second one is ignored");
            }
        }

        public void Add(V1Pod pod)
        {
            if (!TryName(pod.Metadata, "Pod", out var ns, out var name))
            {
                return;
            }

            var what = $"Pod {ns}/{name}";
            if (pod.Status?.Phase is "Succeeded" or "Failed")
            {
                // A finished pod's IP may already belong to a new pod.
                Log.Debug("inventory", $"ignoring {what}: phase {pod.Status.Phase}");
                return;
            }

            if (!_workloadNames.Add((ns, name)))
            {
                Warn($"{what} appears twice; the second one is ignored");
                return;
            }

            var ipTexts = pod.Status?.PodIPs is { Count: > 0 } podIps
                ? podIps.Select(p => p?.Ip).ToList()
                : [pod.Status?.PodIP];
            ipTexts.RemoveAll(string.IsNullOrWhiteSpace);
            if (ipTexts.Count == 0)
            {
                Warn($"{what} skipped: it has no IP (status.podIPs and status.podIP are empty)");
                return;
            }

            var addresses = ImmutableArray.CreateBuilder<IPAddress>();
            foreach (var text in ipTexts)
            {
                if (!TryParseAddress(text, out var address))
                {
                    Warn($"{what} skipped: pod IP '{text}' is not an IPv4 or IPv6 address");
                    return;
                }

                if (!addresses.Contains(address))
                {
                    addresses.Add(_pool.Address(address));
                }
            }

            var hostNetwork = pod.Spec?.HostNetwork == true;
            if (!hostNetwork)
            {
                foreach (var address in addresses)
                {
                    if (_workloadIps.TryGetValue(address, out var owner))
                    {
                        Warn($"{what} skipped: its IP {address} already belongs to Pod {owner}");
                        return;
                    }
                }
            }

            var labels = _pool.Labels(pod.Metadata?.Labels);
            var annotations = pod.Metadata?.Annotations;
            var workload = new Workload
            {
                Name = _pool.String(name),
                Namespace = _pool.String(ns),
                ServiceAccount = string.IsNullOrEmpty(pod.Spec?.ServiceAccountName) ? "default" : _pool.String(pod.Spec.ServiceAccountName),
                NodeName = string.IsNullOrEmpty(pod.Spec?.NodeName) ? null : _pool.String(pod.Spec.NodeName),
                Addresses = addresses.ToImmutable(),
                Labels = labels,
                NetnsPath = annotations?.TryGetValue(NetnsAnnotation, out var netns) == true && !string.IsNullOrWhiteSpace(netns) ? netns : null,
                Uid = string.IsNullOrEmpty(pod.Metadata?.Uid) ? null : pod.Metadata.Uid,
                QosClass = _pool.OptionalString(pod.Status?.QosClass),
                Phase = _pool.OptionalString(pod.Status?.Phase),
                FailOpen = FailOpen(what, annotations),
                Enrolled = !hostNetwork && Enrolled(what, ns, labels),
                HostNetwork = hostNetwork,
                HostAddresses = _pool.Addresses(HostAddresses(pod)),
            };

            _workloads.Add(workload);
            if (!hostNetwork)
            {
                foreach (var address in workload.Addresses)
                {
                    _workloadIps[address] = workload;
                }
            }
        }

        public void Add(V1Service service)
        {
            if (!TryName(service.Metadata, "Service", out var ns, out var name))
            {
                return;
            }

            var what = $"Service {ns}/{name}";
            if (_services.ContainsKey((ns, name)))
            {
                Warn($"{what} appears twice; the second one is ignored");
                return;
            }

            var ipTexts = service.Spec?.ClusterIPs is { Count: > 0 } clusterIps
                ? clusterIps.ToList()
                : [service.Spec?.ClusterIP];
            var addresses = ImmutableArray.CreateBuilder<IPAddress>();
            foreach (var text in ipTexts)
            {
                // Headless ("None") and ExternalName services have no VIP but still list endpoints.
                if (string.IsNullOrWhiteSpace(text) || text == "None")
                {
                    continue;
                }

                if (!TryParseAddress(text, out var address))
                {
                    Warn($"{what} skipped: cluster IP '{text}' is not an IPv4 or IPv6 address");
                    return;
                }

                addresses.Add(address);
            }

            var ports = ImmutableArray.CreateBuilder<ServicePort>();
            foreach (var port in service.Spec?.Ports ?? [])
            {
                if (port is null)
                {
                    continue;
                }

                if (!IsPort(port.Port))
                {
                    Warn($"{what} skipped: port {port.Port} is outside 1-65535");
                    return;
                }

                int? targetNumber = null;
                string? targetName = null;
                var target = port.TargetPort?.Value;
                if (string.IsNullOrEmpty(target))
                {
                    targetNumber = port.Port; // Kubernetes defaults targetPort to port
                }
                else if (int.TryParse(target, NumberStyles.None, CultureInfo.InvariantCulture, out var number))
                {
                    if (!IsPort(number))
                    {
                        Warn($"{what} skipped: targetPort {number} of port {port.Port} is outside 1-65535");
                        return;
                    }

                    targetNumber = number;
                }
                else
                {
                    targetName = target;
                }

                ports.Add(new ServicePort(
                    string.IsNullOrEmpty(port.Name) ? null : port.Name,
                    port.Port,
                    targetNumber,
                    targetName,
                    Protocol(port.Protocol)));
            }

            _services[(ns, name)] = new Service
            {
                Name = _pool.String(name),
                Namespace = _pool.String(ns),
                ClusterIps = addresses.ToImmutable(),
                Ports = ports.ToImmutable(),
                Endpoints = [],
            };
        }

        public void Add(V1EndpointSlice slice)
        {
            if (!TryName(slice.Metadata, "EndpointSlice", out var ns, out var name))
            {
                return;
            }

            var what = $"EndpointSlice {ns}/{name}";
            if (slice.Metadata.Labels?.TryGetValue(ServiceNameLabel, out var serviceName) != true || string.IsNullOrEmpty(serviceName))
            {
                Log.Debug("inventory", $"ignoring {what}: no {ServiceNameLabel} label, so it belongs to no service");
                return;
            }

            var family = slice.AddressType switch
            {
                "IPv4" => AddressFamily.InterNetwork,
                "IPv6" => AddressFamily.InterNetworkV6,
                _ => AddressFamily.Unspecified,
            };
            if (family == AddressFamily.Unspecified)
            {
                Log.Debug("inventory", $"ignoring {what}: addressType '{slice.AddressType}' carries no IP addresses");
                return;
            }

            var ports = ImmutableArray.CreateBuilder<EndpointPort>();
            foreach (var port in slice.Ports ?? [])
            {
                if (port?.Port is not { } number)
                {
                    continue; // a port without a number restricts nothing we could route to
                }

                if (!IsPort(number))
                {
                    Warn($"{what}: port {number} is outside 1-65535 and is ignored");
                    continue;
                }

                ports.Add(new EndpointPort(string.IsNullOrEmpty(port.Name) ? null : port.Name, number, Protocol(port.Protocol)));
            }

            var slicePorts = ports.ToImmutable();
            var sliceName = _pool.String(name);
            foreach (var endpoint in slice.Endpoints ?? [])
            {
                if (endpoint is null)
                {
                    continue;
                }

                // Kubernetes: an unknown (null) ready condition is to be read as ready; serving defaults to ready.
                var ready = endpoint.Conditions?.Ready ?? true;
                var serving = endpoint.Conditions?.Serving ?? ready;
                var terminating = endpoint.Conditions?.Terminating ?? false;
                var pod = endpoint.TargetRef is { Kind: "Pod", Name: { Length: > 0 } podName } targetRef
                    ? new PodReference(_pool.String(string.IsNullOrEmpty(targetRef.NamespaceProperty) ? ns : targetRef.NamespaceProperty), _pool.String(podName))
                    : null;
                var nodeName = string.IsNullOrEmpty(endpoint.NodeName) ? null : _pool.String(endpoint.NodeName);
                foreach (var text in endpoint.Addresses ?? [])
                {
                    if (!TryParseAddress(text, out var address) || address.AddressFamily != family)
                    {
                        Warn($"{what}: endpoint address '{text}' is not an {slice.AddressType} address and is ignored");
                        continue;
                    }

                    _endpoints.Add((ns, serviceName, new ServiceEndpoint
                    {
                        Address = _pool.Address(address),
                        Ready = ready,
                        Serving = serving,
                        Terminating = terminating,
                        NodeName = nodeName,
                        Pod = pod,
                        SliceName = sliceName,
                        Ports = slicePorts,
                    }));
                }
            }
        }

        public InventorySnapshot ToSnapshot()
        {
            var endpointsByService = _endpoints
                .GroupBy(e => (e.Namespace, e.ServiceName))
                .ToDictionary(g => g.Key, g => g.Select(e => e.Endpoint).ToImmutableArray());
            foreach (var key in endpointsByService.Keys)
            {
                if (!_services.ContainsKey(key))
                {
                    Log.Debug("inventory", $"EndpointSlices for Service {key.Namespace}/{key.ServiceName} ignored: no such service");
                }
            }

            var services = _services.Values
                .Select(s => endpointsByService.TryGetValue((s.Namespace, s.Name), out var endpoints) ? s with { Endpoints = endpoints } : s)
                .OrderBy(s => s.Namespace, StringComparer.Ordinal).ThenBy(s => s.Name, StringComparer.Ordinal)
                .ToImmutableArray();
            var workloads = _workloads
                .OrderBy(w => w.Namespace, StringComparer.Ordinal).ThenBy(w => w.Name, StringComparer.Ordinal)
                .ToImmutableArray();
            var namespaces = _namespaces.Values.OrderBy(n => n.Name, StringComparer.Ordinal).ToImmutableArray();
            var policies = PolicyCompiler.Compile(AuthorizationPolicies, PeerAuthentications, meshRootNamespace, Warn);
            return InventorySnapshot.Create(namespaces, workloads, services, [.. _warnings], policies);
        }

        private bool Enrolled(string what, string ns, IReadOnlyDictionary<string, string> podLabels)
        {
            if (podLabels.TryGetValue(MeshLabel, out var podChoice))
            {
                switch (podChoice)
                {
                    case "enabled":
                        return true;
                    case "disabled":
                        return false;
                    default:
                        Warn($"{what}: label {MeshLabel}='{podChoice}' is neither 'enabled' nor 'disabled'; the namespace decides");
                        break;
                }
            }

            return _namespaces.TryGetValue(ns, out var meshNamespace) && meshNamespace.Enrolled;
        }

        private bool FailOpen(string what, IDictionary<string, string>? annotations)
        {
            if (annotations?.TryGetValue(FailOpenAnnotation, out var text) != true || text is null)
            {
                return false;
            }

            if (bool.TryParse(text.Trim(), out var failOpen))
            {
                return failOpen;
            }

            Warn($"{what}: annotation {FailOpenAnnotation}='{text}' is neither 'true' nor 'false'; it fails closed");
            return false;
        }

        private bool TryName(V1ObjectMeta? metadata, string kind, out string ns, out string name)
        {
            // An object without a namespace (as kubectl prints for the current one) is read as "default".
            ns = string.IsNullOrEmpty(metadata?.NamespaceProperty) ? "default" : metadata.NamespaceProperty;
            name = metadata?.Name ?? "";
            if (name.Length == 0)
            {
                Warn($"{kind} without metadata.name in namespace {ns} skipped");
                return false;
            }

            return true;
        }

        private void Warn(string message) => _warnings.Add(message);
    }

    private static string Protocol(string? protocol) =>
        string.IsNullOrEmpty(protocol) ? "TCP" : protocol.ToUpperInvariant();

    private static bool IsPort(int port) => port is > 0 and <= 65535;

    /// <summary>
    /// The node's addresses as the pod reports them (status.hostIPs, or status.hostIP): the agent never
    /// connects to its own ports on a node address. One that does not parse is left out.
    /// </summary>
    private static ImmutableArray<IPAddress> HostAddresses(V1Pod pod)
    {
        var texts = pod.Status?.HostIPs is { Count: > 0 } hostIps ? hostIps.Select(h => h?.Ip) : [pod.Status?.HostIP];
        var addresses = ImmutableArray.CreateBuilder<IPAddress>();
        foreach (var text in texts)
        {
            if (TryParseAddress(text, out var address) && !addresses.Contains(address))
            {
                addresses.Add(address);
            }
        }

        return addresses.ToImmutable();
    }

    /// <summary>
    /// Parses an address the way Kubernetes validates one. IPAddress.TryParse alone accepts legacy IPv4 forms
    /// ("10.1" is 10.0.0.1, "010.0.0.1" is octal) that would silently route somewhere unintended.
    /// </summary>
    private static bool TryParseAddress(string? text, [NotNullWhen(true)] out IPAddress? address)
    {
        if (!IPAddress.TryParse(text, out address)
            || address.Equals(IPAddress.Any) || address.Equals(IPAddress.IPv6Any)
            || (address.AddressFamily == AddressFamily.InterNetworkV6 && address.ScopeId != 0))
        {
            address = null;
            return false;
        }

        if (address.AddressFamily == AddressFamily.InterNetwork && address.ToString() != text)
        {
            address = null;
            return false;
        }

        return address.AddressFamily is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6;
    }

    private static string Describe(IKubernetesObject obj)
    {
        var kind = string.IsNullOrEmpty(obj.Kind) ? obj.GetType().Name : obj.Kind;
        return obj is IMetadata<V1ObjectMeta> { Metadata: { } metadata }
            ? $"{kind} {metadata.NamespaceProperty ?? "-"}/{metadata.Name}"
            : kind;
    }
}
