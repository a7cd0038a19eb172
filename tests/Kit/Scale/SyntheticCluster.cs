using System.Net;
using k8s;
using k8s.Models;

namespace Weft.Scale;

/// <summary>
/// A large cluster of ordinary objects for scale tests and the scale benchmark, as issue 16 describes it: pods
/// spread over many nodes, one Service per <see cref="PodsPerService"/> pods, each with one EndpointSlice
/// listing its pods. No pod runs on the agent's node, so the agent holds all of them as remote pods.
/// Addresses come from 10.64.0.0/10 (pods), 10.128.0.0/12 (services) and 172.16.0.0/12 (nodes): apart from the
/// harness's own ranges, and unique for up to a million pods.
/// </summary>
internal sealed class SyntheticCluster
{
    public const int PodsPerService = 10;
    public const int ServicePort = 80;
    public const int TargetPort = 8080;

    public SyntheticCluster(int pods, int nodes = 500, int namespaces = 50)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(pods);
        Pods = pods;
        Nodes = nodes;
        Namespaces = namespaces;
    }

    public int Pods { get; }

    public int Nodes { get; }

    public int Namespaces { get; }

    public int Services => (Pods + PodsPerService - 1) / PodsPerService;

    public static string NamespaceName(int index) => $"scale-{index}";

    public string PodName(int pod) => $"app-{pod / PodsPerService}-{pod % PodsPerService}";

    public string PodNamespace(int pod) => NamespaceName(pod / PodsPerService % Namespaces);

    public static IPAddress PodAddress(int pod) => Address(10, 64, pod);

    public static IPAddress ServiceAddress(int service) => Address(10, 128, service);

    public static IPAddress NodeAddress(int node) => Address(172, 16, node);

    /// <summary>Every object, namespaces first, then per service its pods, the Service and its EndpointSlice.</summary>
    public IEnumerable<IKubernetesObject> Objects()
    {
        for (var ns = 0; ns < Namespaces; ns++)
        {
            yield return Namespace(ns);
        }

        for (var service = 0; service < Services; service++)
        {
            var first = service * PodsPerService;
            var last = Math.Min(Pods, first + PodsPerService);
            for (var pod = first; pod < last; pod++)
            {
                yield return Pod(pod);
            }

            yield return Service(service);
            yield return EndpointSlice(service, Enumerable.Range(first, last - first));
        }
    }

    /// <summary>
    /// The standalone inventory file's text: every object of <see cref="Objects"/>, one YAML document each.
    /// KubernetesYaml's serializer would take minutes for 100,000 pods, so the documents are written from
    /// templates of the same fields.
    /// </summary>
    public void WriteYaml(TextWriter writer)
    {
        for (var ns = 0; ns < Namespaces; ns++)
        {
            writer.Write($"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NamespaceName(ns)}\n  labels:\n    weft.dev/mesh: enabled\n");
        }

        for (var service = 0; service < Services; service++)
        {
            var first = service * PodsPerService;
            var last = Math.Min(Pods, first + PodsPerService);
            for (var pod = first; pod < last; pod++)
            {
                WritePod(writer, pod);
            }

            var ns = NamespaceName(service % Namespaces);
            writer.Write($"---\napiVersion: v1\nkind: Service\nmetadata:\n  name: app-{service}\n  namespace: {ns}\nspec:\n"
                + $"  clusterIP: {ServiceAddress(service)}\n  clusterIPs:\n  - {ServiceAddress(service)}\n  selector:\n    app: app-{service}\n"
                + $"  ports:\n  - name: http\n    port: {ServicePort}\n    targetPort: {TargetPort}\n    protocol: TCP\n");
            writer.Write($"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: app-{service}-x7k2p\n  namespace: {ns}\n"
                + $"  labels:\n    kubernetes.io/service-name: app-{service}\naddressType: IPv4\nports:\n- name: http\n  port: {TargetPort}\n  protocol: TCP\nendpoints:\n");
            for (var pod = first; pod < last; pod++)
            {
                writer.Write($"- addresses:\n  - {PodAddress(pod)}\n  conditions:\n    ready: true\n  nodeName: node-{pod % Nodes}\n"
                    + $"  targetRef:\n    kind: Pod\n    name: {PodName(pod)}\n    namespace: {PodNamespace(pod)}\n");
            }
        }
    }

    private void WritePod(TextWriter writer, int pod)
    {
        var service = pod / PodsPerService;
        var node = pod % Nodes;
        writer.Write($"---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {PodName(pod)}\n  namespace: {PodNamespace(pod)}\n  uid: {Uid(pod)}\n"
            + $"  labels:\n    app: app-{service}\n    pod-template-hash: {TemplateHash(service)}\n    version: v1\n"
            + $"spec:\n  nodeName: node-{node}\n  serviceAccountName: app-{service}\n  containers:\n  - name: app\n    image: registry.example/app:1.0\n"
            + $"    ports:\n    - containerPort: {TargetPort}\n      name: http\n"
            + $"status:\n  phase: Running\n  podIP: {PodAddress(pod)}\n  podIPs:\n  - ip: {PodAddress(pod)}\n  hostIP: {NodeAddress(node)}\n"
            + $"  hostIPs:\n  - ip: {NodeAddress(node)}\n  qosClass: BestEffort\n  conditions:\n  - type: Ready\n    status: \"True\"\n");
    }

    private static string Uid(int pod) => $"00000000-0000-4000-8000-{pod:x12}";

    // A letter first, so YAML reads it as a string whatever the digits.
    private static string TemplateHash(int service) => $"h{service * 7919 % 100000:x5}";

    public static V1Namespace Namespace(int index) => new()
    {
        ApiVersion = "v1",
        Kind = "Namespace",
        Metadata = new V1ObjectMeta { Name = NamespaceName(index), Labels = new Dictionary<string, string> { ["weft.dev/mesh"] = "enabled" } },
    };

    public V1Pod Pod(int pod, bool ready = true)
    {
        var service = pod / PodsPerService;
        var node = pod % Nodes;
        return new V1Pod
        {
            ApiVersion = "v1",
            Kind = "Pod",
            Metadata = new V1ObjectMeta
            {
                Name = PodName(pod),
                NamespaceProperty = PodNamespace(pod),
                Uid = Uid(pod),
                Labels = new Dictionary<string, string>
                {
                    ["app"] = $"app-{service}",
                    ["pod-template-hash"] = TemplateHash(service),
                    ["version"] = "v1",
                },
            },
            Spec = new V1PodSpec
            {
                NodeName = $"node-{node}",
                ServiceAccountName = $"app-{service}",
                Containers = [new V1Container { Name = "app", Image = "registry.example/app:1.0", Ports = [new V1ContainerPort { ContainerPort = TargetPort, Name = "http" }] }],
            },
            Status = new V1PodStatus
            {
                Phase = "Running",
                PodIP = PodAddress(pod).ToString(),
                PodIPs = [new V1PodIP { Ip = PodAddress(pod).ToString() }],
                HostIP = NodeAddress(node).ToString(),
                HostIPs = [new V1HostIP { Ip = NodeAddress(node).ToString() }],
                QosClass = "BestEffort",
                Conditions = [new V1PodCondition { Type = "Ready", Status = ready ? "True" : "False" }],
            },
        };
    }

    public V1Service Service(int service) => new()
    {
        ApiVersion = "v1",
        Kind = "Service",
        Metadata = new V1ObjectMeta { Name = $"app-{service}", NamespaceProperty = NamespaceName(service % Namespaces) },
        Spec = new V1ServiceSpec
        {
            ClusterIP = ServiceAddress(service).ToString(),
            ClusterIPs = [ServiceAddress(service).ToString()],
            Selector = new Dictionary<string, string> { ["app"] = $"app-{service}" },
            Ports = [new V1ServicePort { Name = "http", Port = ServicePort, TargetPort = TargetPort, Protocol = "TCP" }],
        },
    };

    /// <summary>The Service's one EndpointSlice listing the given pods (all ready unless <paramref name="notReady"/> says otherwise).</summary>
    public V1EndpointSlice EndpointSlice(int service, IEnumerable<int> pods, ISet<int>? notReady = null) => new()
    {
        ApiVersion = "discovery.k8s.io/v1",
        Kind = "EndpointSlice",
        Metadata = new V1ObjectMeta
        {
            Name = $"app-{service}-x7k2p",
            NamespaceProperty = NamespaceName(service % Namespaces),
            Labels = new Dictionary<string, string> { ["kubernetes.io/service-name"] = $"app-{service}" },
        },
        AddressType = "IPv4",
        Ports = [new Discoveryv1EndpointPort { Name = "http", Port = TargetPort, Protocol = "TCP" }],
        Endpoints = pods.Select(pod => new V1Endpoint
        {
            Addresses = [PodAddress(pod).ToString()],
            Conditions = new V1EndpointConditions { Ready = notReady?.Contains(pod) != true },
            NodeName = $"node-{pod % Nodes}",
            TargetRef = new V1ObjectReference { Kind = "Pod", Name = PodName(pod), NamespaceProperty = PodNamespace(pod) },
        }).ToList(),
    };

    private static IPAddress Address(byte first, byte second, int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(index, 0x3FFFFF - 1);
        var value = index + 1; // never the .0 of the range
        return new IPAddress(new[] { first, (byte)(second + (value >> 16)), (byte)(value >> 8), (byte)value });
    }
}
