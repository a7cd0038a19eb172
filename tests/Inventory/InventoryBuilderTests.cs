using System.Net;
using k8s;
using k8s.Models;
using Weft.Inventory;

namespace Weft.Tests.Inventory;

public class InventoryBuilderTests
{
    private static InventorySnapshot Build(string yaml) =>
        InventoryBuilder.Build(KubernetesYaml.LoadAllFromString(yaml).Cast<IKubernetesObject>());

    private const string Namespaces = """
        apiVersion: v1
        kind: Namespace
        metadata: {name: demo, labels: {weft.dev/mesh: enabled}}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: plain}
        """;

    private static string Pod(string ns, string name, string ip, string node = "node1", string labels = "{}", string extraSpec = "", string annotations = "{}") => "\n" + $$$"""
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: {{{name}}}, namespace: {{{ns}}}, labels: {{{labels}}}, annotations: {{{annotations}}}}
        spec: {nodeName: {{{node}}}{{{extraSpec}}}}
        status: {podIP: "{{{ip}}}", podIPs: [{ip: "{{{ip}}}"}]}

        """;

    [Fact]
    public void Pods_InLabelledNamespace_AreEnrolled_UnlessTheirLabelSaysDisabled()
    {
        var snapshot = Build(Namespaces
            + Pod("demo", "in", "10.0.0.1")
            + Pod("demo", "optout", "10.0.0.2", labels: "{weft.dev/mesh: disabled}")
            + Pod("plain", "out", "10.0.0.3")
            + Pod("plain", "optin", "10.0.0.4", labels: "{weft.dev/mesh: enabled}")
            + Pod("nowhere", "orphan", "10.0.0.5"));

        bool Enrolled(string name) => snapshot.Workloads.Single(w => w.Name == name).Enrolled;
        Assert.True(Enrolled("in"));
        Assert.False(Enrolled("optout"));
        Assert.False(Enrolled("out"));
        Assert.True(Enrolled("optin"));
        Assert.False(Enrolled("orphan"));
    }

    [Fact]
    public void NamespaceDeclaredAfterItsPods_StillEnrollsThem()
    {
        var snapshot = Build(Pod("demo", "early", "10.0.0.1").TrimStart('-', '\n') + "---\n" + Namespaces);

        Assert.True(snapshot.Workloads.Single().Enrolled);
    }

    [Fact]
    public void HostNetworkPod_IsNeverEnrolled_NorFoundByTheNodeAddress()
    {
        var snapshot = Build(Namespaces + Pod("demo", "hostnet", "192.168.1.10", extraSpec: ", hostNetwork: true"));

        Assert.False(snapshot.Workloads.Single().Enrolled);
        Assert.False(snapshot.TryGetWorkload(IPAddress.Parse("192.168.1.10"), out _));
    }

    [Fact]
    public void LocalEnrolledWorkloads_AreThoseOnTheNamedNodeOnly()
    {
        var snapshot = Build(Namespaces
            + Pod("demo", "a1", "10.0.1.1", node: "node1")
            + Pod("demo", "a2", "10.0.1.2", node: "node1")
            + Pod("demo", "b1", "10.0.2.1", node: "node2")
            + Pod("plain", "c1", "10.0.1.3", node: "node1"));

        Assert.Equal(["a1", "a2"], snapshot.GetLocalEnrolledWorkloads("node1").Select(w => w.Name).Order());
        Assert.Equal(["b1"], snapshot.GetLocalEnrolledWorkloads("node2").Select(w => w.Name));
        Assert.Empty(snapshot.GetLocalEnrolledWorkloads("node9"));
    }

    [Fact]
    public void Workload_CarriesIdentityNetnsAndFailureMode()
    {
        var snapshot = Build(Namespaces
            + Pod("demo", "a1", "10.0.0.1", extraSpec: ", serviceAccountName: api",
                annotations: "{weft.dev/netns: /var/run/netns/weft-x-a1, weft.dev/fail-open: 'true'}")
            + Pod("demo", "a2", "10.0.0.2"));

        var a1 = snapshot.Workloads.Single(w => w.Name == "a1");
        var a2 = snapshot.Workloads.Single(w => w.Name == "a2");
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/api", a1.SpiffeId("cluster.local"));
        Assert.Equal("/var/run/netns/weft-x-a1", a1.NetnsPath);
        Assert.True(a1.FailOpen);
        Assert.Equal("node1", a1.NodeName);
        Assert.Equal("spiffe://cluster.local/ns/demo/sa/default", a2.SpiffeId("cluster.local"));
        Assert.Null(a2.NetnsPath);
        Assert.False(a2.FailOpen);
    }

    [Fact]
    public void Workloads_AreFoundByEveryAddress_IPv4AndIPv6()
    {
        var snapshot = Build(Namespaces + "\n" + """
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: dual, namespace: demo, labels: {app: dual}}
            spec: {nodeName: node1}
            status: {podIP: 10.0.0.7, podIPs: [{ip: 10.0.0.7}, {ip: "fd00::7"}]}
            """);

        Assert.True(snapshot.TryGetWorkload(IPAddress.Parse("10.0.0.7"), out var byV4));
        Assert.True(snapshot.TryGetWorkload(IPAddress.Parse("fd00::7"), out var byV6));
        Assert.True(snapshot.TryGetWorkload(IPAddress.Parse("::ffff:10.0.0.7"), out var byMapped));
        Assert.Same(byV4, byV6);
        Assert.Same(byV4, byMapped);
        Assert.Equal(IPAddress.Parse("10.0.0.7"), byV4.Ipv4);
        Assert.Equal(IPAddress.Parse("fd00::7"), byV4.Ipv6);
        Assert.Equal("dual", byV4.Labels["app"]);
        Assert.False(snapshot.TryGetWorkload(IPAddress.Parse("10.0.0.8"), out _));
    }

    [Fact]
    public void UnusableObjects_AreSkippedWithAWarningNamingThem_TheRestIsKept()
    {
        var snapshot = Build(Namespaces + "\n" + """
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: pending, namespace: demo}
            spec: {nodeName: node1}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: broken, namespace: demo}
            spec: {clusterIP: 10.96.0.999, ports: [{port: 80}]}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: fine, namespace: demo}
            spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
            """ + Pod("demo", "ok", "10.0.0.1"));

        Assert.Equal(["ok"], snapshot.Workloads.Select(w => w.Name));
        Assert.Equal(["fine"], snapshot.Services.Select(s => s.Name));
        Assert.Contains(snapshot.Warnings, w => w.Contains("Pod demo/pending") && w.Contains("no IP"));
        Assert.Contains(snapshot.Warnings, w => w.Contains("Service demo/broken") && w.Contains("10.96.0.999"));
    }

    [Theory]
    [InlineData("10.1")]         // IPAddress.Parse reads this as 10.0.0.1
    [InlineData("010.0.0.1")]    // and this as octal
    [InlineData("10.0.0.256")]
    [InlineData("0.0.0.0")]
    public void PodWithAnAddressKubernetesWouldReject_IsSkipped(string ip)
    {
        var snapshot = Build(Namespaces + Pod("demo", "odd", ip));

        Assert.Empty(snapshot.Workloads);
        Assert.Contains(snapshot.Warnings, w => w.Contains("Pod demo/odd") && w.Contains(ip));
    }

    [Fact]
    public void PodReusingAnotherPodsIp_IsSkipped_SoLookupsStayUnambiguous()
    {
        var snapshot = Build(Namespaces + Pod("demo", "first", "10.0.0.1") + Pod("demo", "second", "10.0.0.1"));

        Assert.True(snapshot.TryGetWorkload(IPAddress.Parse("10.0.0.1"), out var owner));
        Assert.Equal("first", owner.Name);
        Assert.Contains(snapshot.Warnings, w => w.Contains("Pod demo/second") && w.Contains("demo/first"));
    }

    [Fact]
    public void UnknownKinds_AreIgnored_NotFatal()
    {
        var objects = new IKubernetesObject[]
        {
            new V1ConfigMap { ApiVersion = "v1", Kind = "ConfigMap", Metadata = new V1ObjectMeta { Name = "cfg", NamespaceProperty = "demo" } },
            new V1NetworkPolicy { ApiVersion = "networking.k8s.io/v1", Kind = "NetworkPolicy", Metadata = new V1ObjectMeta { Name = "np" } },
            new V1Namespace { ApiVersion = "v1", Kind = "Namespace", Metadata = new V1ObjectMeta { Name = "demo" } },
        };

        var snapshot = InventoryBuilder.Build(objects);

        Assert.Equal(["demo"], snapshot.Namespaces.Select(n => n.Name));
        Assert.Empty(snapshot.Warnings);
    }

    private const string WebService = """
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: demo}
        spec:
          clusterIP: 10.96.0.10
          clusterIPs: [10.96.0.10, "fd00:96::10"]
          ports:
          - {name: http, port: 80, targetPort: 8080, protocol: TCP}
          - {name: admin, port: 9000, targetPort: admin-port}
          - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: web-v4, namespace: demo, labels: {kubernetes.io/service-name: web}}
        addressType: IPv4
        ports: [{name: http, port: 8080, protocol: TCP}, {name: admin, port: 9901}, {name: dns, port: 5353, protocol: UDP}]
        endpoints:
        - addresses: [10.0.2.1]
          conditions: {ready: true}
          nodeName: node2
          targetRef: {kind: Pod, name: web-1, namespace: demo}
        - addresses: [10.0.2.2]
          conditions: {ready: false, serving: true, terminating: true}
          nodeName: node2
        - addresses: [10.0.3.1]
          nodeName: node3
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: web-v6, namespace: demo, labels: {kubernetes.io/service-name: web}}
        addressType: IPv6
        ports: [{name: http, port: 8080}, {name: admin, port: 9901}]
        endpoints:
        - addresses: ["fd00::2:1"]
          conditions: {ready: true}
        """;

    [Fact]
    public void ServiceVip_ResolvesToReadyEndpoints_NullReadyCountsAsReady()
    {
        var snapshot = Build(WebService);

        Assert.True(snapshot.TryResolveService(IPEndPoint.Parse("10.96.0.10:80"), out var target));
        Assert.Equal("web", target.Service.Name);
        Assert.Equal("http", target.Port.Name);
        Assert.Equal(
            [IPEndPoint.Parse("10.0.2.1:8080"), IPEndPoint.Parse("10.0.3.1:8080")],
            target.ReadyEndpoints.OrderBy(e => e.ToString()));
    }

    [Fact]
    public void NotReadyEndpoint_IsKeptInTheServiceWithItsConditions_ButNeverPicked()
    {
        var snapshot = Build(WebService);

        var terminating = snapshot.Services.Single().Endpoints.Single(e => e.Address.Equals(IPAddress.Parse("10.0.2.2")));
        Assert.False(terminating.Ready);
        Assert.True(terminating.Serving);
        Assert.True(terminating.Terminating);
        var withPod = snapshot.Services.Single().Endpoints.Single(e => e.Address.Equals(IPAddress.Parse("10.0.2.1")));
        Assert.Equal(new PodReference("demo", "web-1"), withPod.Pod);
        Assert.Equal("node2", withPod.NodeName);

        Assert.True(snapshot.TryResolveService(IPEndPoint.Parse("10.96.0.10:80"), out var target));
        for (var i = 0; i < 10; i++)
        {
            Assert.NotEqual(IPEndPoint.Parse("10.0.2.2:8080"), target.Pick());
        }
    }

    [Fact]
    public void NamedTargetPort_ResolvesThroughTheEndpointSlicePortOfTheSameName()
    {
        var snapshot = Build(WebService);

        Assert.True(snapshot.TryResolveService(IPEndPoint.Parse("10.96.0.10:9000"), out var target));
        Assert.Equal("admin-port", target.Port.TargetPortName);
        Assert.All(target.ReadyEndpoints, e => Assert.Equal(9901, e.Port));
        Assert.Equal(2, target.ReadyEndpoints.Length);
    }

    [Fact]
    public void NumericTargetPort_IsUsedWhenTheSliceHasNoPortOfThatName()
    {
        var snapshot = Build("""
            apiVersion: v1
            kind: Service
            metadata: {name: legacy, namespace: demo}
            spec: {clusterIP: 10.96.0.20, ports: [{name: web, port: 80, targetPort: 8081}]}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: legacy-1, namespace: demo, labels: {kubernetes.io/service-name: legacy}}
            addressType: IPv4
            endpoints: [{addresses: [10.0.5.1]}]
            """);

        Assert.True(snapshot.TryResolveService(IPEndPoint.Parse("10.96.0.20:80"), out var target));
        Assert.Equal([IPEndPoint.Parse("10.0.5.1:8081")], target.ReadyEndpoints.ToArray());
    }

    [Fact]
    public void IPv6Vip_ResolvesToIPv6Endpoints()
    {
        var snapshot = Build(WebService);

        Assert.True(snapshot.TryResolveService(IPEndPoint.Parse("[fd00:96::10]:80"), out var target));
        Assert.Equal([IPEndPoint.Parse("[fd00::2:1]:8080")], target.ReadyEndpoints.ToArray());
        Assert.Equal(IPEndPoint.Parse("[fd00::2:1]:8080"), target.Pick());
    }

    [Fact]
    public void AddressesThatAreNoTcpServicePort_DoNotResolve()
    {
        var snapshot = Build(WebService + "\n" + """
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: headless, namespace: demo}
            spec: {clusterIP: None, ports: [{port: 80}]}
            """);

        Assert.False(snapshot.TryResolveService(IPEndPoint.Parse("10.96.0.10:81"), out _)); // no such port
        Assert.False(snapshot.TryResolveService(IPEndPoint.Parse("10.96.0.10:53"), out _)); // UDP
        Assert.False(snapshot.TryResolveService(IPEndPoint.Parse("10.0.2.1:8080"), out _)); // a pod, not a VIP
        Assert.True(snapshot.TryGetService("demo", "headless", out var headless));
        Assert.Empty(headless.ClusterIps);
    }

    [Fact]
    public void ServiceWithoutEndpoints_ResolvesButPicksNothing()
    {
        var snapshot = Build("""
            apiVersion: v1
            kind: Service
            metadata: {name: empty, namespace: demo}
            spec: {clusterIP: 10.96.0.30, ports: [{port: 80}]}
            """);

        Assert.True(snapshot.TryResolveService(IPEndPoint.Parse("10.96.0.30:80"), out var target));
        Assert.Empty(target.ReadyEndpoints);
        Assert.Null(target.Pick());
    }

    [Fact]
    public void SameEndpointInTwoSlices_IsPickedAsOneEndpoint()
    {
        var slice = (string name) => $$$"""
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: {{{name}}}, namespace: demo, labels: {kubernetes.io/service-name: svc}}
            addressType: IPv4
            ports: [{port: 8080}]
            endpoints: [{addresses: [10.0.6.1]}]

            """;
        var snapshot = Build("""
            apiVersion: v1
            kind: Service
            metadata: {name: svc, namespace: demo}
            spec: {clusterIP: 10.96.0.40, ports: [{port: 80, targetPort: 8080}]}

            """ + slice("svc-a") + slice("svc-b"));

        Assert.True(snapshot.TryResolveService(IPEndPoint.Parse("10.96.0.40:80"), out var target));
        Assert.Single(target.ReadyEndpoints);
    }
}
