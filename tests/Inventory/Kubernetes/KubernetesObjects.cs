using k8s.Models;
using Weft.Policy;

namespace Weft.Tests.Inventory.Kubernetes;

/// <summary>Small builders for the objects the tests put into the fake API server.</summary>
internal static class KubernetesObjects
{
    public static V1Namespace Namespace(string name, bool meshEnabled) => new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = name,
            Labels = meshEnabled ? new Dictionary<string, string> { ["weft.dev/mesh"] = "enabled" } : new Dictionary<string, string> { ["team"] = "x" },
        },
    };

    public static V1Pod Pod(string ns, string name, string node, string ip, string? uid = null, string qos = "Burstable",
        IDictionary<string, string>? annotations = null, string phase = "Running") => new()
        {
            Metadata = new V1ObjectMeta
            {
                Name = name,
                NamespaceProperty = ns,
                Uid = uid,
                Labels = new Dictionary<string, string> { ["app"] = name.TrimEnd('0', '1', '2', '3', '4', '5', '6', '7', '8', '9') },
                Annotations = annotations,
            },
            Spec = new V1PodSpec
            {
                NodeName = node,
                ServiceAccountName = name.TrimEnd('0', '1', '2', '3', '4', '5', '6', '7', '8', '9'),
                Containers = [new V1Container { Name = "app", Image = "example/app:1" }],
            },
            Status = new V1PodStatus { Phase = phase, PodIP = ip, PodIPs = [new V1PodIP { Ip = ip }], QosClass = qos },
        };

    public static V1Service Service(string ns, string name, string clusterIp, int port, int targetPort) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = ns },
        Spec = new V1ServiceSpec
        {
            ClusterIP = clusterIp,
            ClusterIPs = [clusterIp],
            Ports = [new V1ServicePort { Name = "http", Port = port, TargetPort = targetPort, Protocol = "TCP" }],
        },
    };

    public static V1EndpointSlice Slice(string ns, string name, string service, int port, params (string Ip, bool Ready)[] endpoints) => new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = name,
            NamespaceProperty = ns,
            Labels = new Dictionary<string, string> { ["kubernetes.io/service-name"] = service },
        },
        AddressType = "IPv4",
        Ports = [new Discoveryv1EndpointPort { Name = "http", Port = port, Protocol = "TCP" }],
        Endpoints = endpoints.Select(e => new V1Endpoint { Addresses = [e.Ip], Conditions = new V1EndpointConditions { Ready = e.Ready } }).ToList(),
    };

    public static V1Alpha1AuthorizationPolicy DenyAll(string ns, string name) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = ns },
        Spec = new AuthorizationPolicySpec { Action = "DENY", Rules = [new AuthorizationRule()] },
    };

    public static V1Alpha1PeerAuthentication Strict(string ns, string name) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = ns },
        Spec = new PeerAuthenticationSpec { Mtls = new PeerMutualTls { Mode = "STRICT" } },
    };
}
