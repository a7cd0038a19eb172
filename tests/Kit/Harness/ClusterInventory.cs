using System.Net;
using k8s;
using k8s.Models;

namespace Weft.Harness;

/// <summary>A Service the test declares: a VIP, one port, and the pods behind it (written as an EndpointSlice).</summary>
internal sealed record ServiceSpec(string Name, string Namespace, string Vip, int Port, int TargetPort, IReadOnlyList<ClusterPod> Endpoints)
{
    public ServiceSpec(string name, string ns, string vip, int port, int targetPort, params ClusterPod[] endpoints)
        : this(name, ns, vip, port, targetPort, (IReadOnlyList<ClusterPod>)endpoints)
    {
    }

    /// <summary>spec.selector of the Service; by default none (endpoints come from the EndpointSlice alone).</summary>
    public IReadOnlyDictionary<string, string>? Selector { get; init; }

    public string PortName { get; init; } = "tcp";

    /// <summary>An IPv6 VIP makes a single-stack IPv6 Service whose EndpointSlice lists the pods' IPv6 addresses.</summary>
    public bool IsIpv6 => IPAddress.Parse(Vip).AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6;
}

internal sealed record InventoryOptions
{
    public IReadOnlyList<ServiceSpec> Services { get; init; } = [];

    /// <summary>Pods left out of the inventory, e.g. a workload the mesh must not know.</summary>
    public IReadOnlyCollection<ClusterPod> Omit { get; init; } = [];

    /// <summary>Namespaces written without the weft.dev/mesh=enabled label.</summary>
    public IReadOnlyCollection<string> UnenrolledNamespaces { get; init; } = [];
}

/// <summary>Writes the standalone inventory (the README's format: ordinary Kubernetes objects plus the netns annotation) with KubernetesClient's own models and YAML serializer.</summary>
internal static class ClusterInventory
{
    public const string NetnsAnnotation = "weft.dev/netns";
    public const string MeshLabel = "weft.dev/mesh";

    public static string Write(IEnumerable<ClusterPod> allPods, InventoryOptions options)
    {
        var pods = allPods.Where(p => !options.Omit.Contains(p)).ToList();
        var namespaces = pods.Select(p => p.Namespace)
            .Concat(options.Services.Select(s => s.Namespace))
            .Distinct()
            .Order(StringComparer.Ordinal);
        var objects = new List<object>();
        foreach (var ns in namespaces)
        {
            objects.Add(new V1Namespace
            {
                ApiVersion = "v1",
                Kind = "Namespace",
                Metadata = new V1ObjectMeta
                {
                    Name = ns,
                    Labels = options.UnenrolledNamespaces.Contains(ns) ? null : new Dictionary<string, string> { [MeshLabel] = "enabled" },
                },
            });
        }

        objects.AddRange(pods.Select(Pod));
        foreach (var service in options.Services)
        {
            objects.Add(Service(service));
            objects.Add(EndpointSlice(service));
        }

        return string.Join("---\n", objects.Select(o => KubernetesYaml.Serialize(o).TrimEnd('\n') + "\n"));
    }

    private static V1Pod Pod(ClusterPod pod)
    {
        var annotations = new Dictionary<string, string>(pod.Spec.Annotations ?? new Dictionary<string, string>())
        {
            [NetnsAnnotation] = pod.NetnsPath,
        };
        return new V1Pod
        {
            ApiVersion = "v1",
            Kind = "Pod",
            Metadata = new V1ObjectMeta
            {
                Name = pod.Name,
                NamespaceProperty = pod.Namespace,
                Labels = new Dictionary<string, string>(pod.Labels),
                Annotations = annotations,
            },
            Spec = new V1PodSpec
            {
                NodeName = pod.Node.Name,
                ServiceAccountName = pod.ServiceAccount,
                Containers = [new V1Container { Name = pod.Spec.App }],
            },
            Status = new V1PodStatus
            {
                Phase = "Running",
                PodIP = pod.Address.ToString(),
                PodIPs = [new V1PodIP { Ip = pod.Address.ToString() }, new V1PodIP { Ip = pod.Address6.ToString() }],
                HostIP = pod.Node.Address.ToString(),
                HostIPs = [new V1HostIP { Ip = pod.Node.Address.ToString() }, new V1HostIP { Ip = pod.Node.Address6.ToString() }],
            },
        };
    }

    private static V1Service Service(ServiceSpec service)
    {
        var vip = IPAddress.Parse(service.Vip).ToString();
        var family = service.IsIpv6 ? "IPv6" : "IPv4";
        return new V1Service
        {
            ApiVersion = "v1",
            Kind = "Service",
            Metadata = new V1ObjectMeta { Name = service.Name, NamespaceProperty = service.Namespace },
            Spec = new V1ServiceSpec
            {
                ClusterIP = vip,
                ClusterIPs = [vip],
                IpFamilies = [family],
                Selector = service.Selector == null ? null : new Dictionary<string, string>(service.Selector),
                Ports = [new V1ServicePort { Name = service.PortName, Port = service.Port, TargetPort = service.TargetPort, Protocol = "TCP" }],
            },
        };
    }

    private static V1EndpointSlice EndpointSlice(ServiceSpec service) => new()
    {
        ApiVersion = "discovery.k8s.io/v1",
        Kind = "EndpointSlice",
        Metadata = new V1ObjectMeta
        {
            Name = service.Name + "-1",
            NamespaceProperty = service.Namespace,
            Labels = new Dictionary<string, string> { ["kubernetes.io/service-name"] = service.Name },
        },
        AddressType = service.IsIpv6 ? "IPv6" : "IPv4",
        Ports = [new Discoveryv1EndpointPort { Name = service.PortName, Port = service.TargetPort, Protocol = "TCP" }],
        Endpoints = service.Endpoints.Select(pod => new V1Endpoint
        {
            Addresses = [(service.IsIpv6 ? pod.Address6 : pod.Address).ToString()],
            Conditions = new V1EndpointConditions { Ready = true },
            NodeName = pod.Node.Name,
            TargetRef = new V1ObjectReference { Kind = "Pod", Name = pod.Name, NamespaceProperty = pod.Namespace },
        }).ToList(),
    };
}
