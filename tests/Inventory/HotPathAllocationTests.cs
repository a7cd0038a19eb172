using System.Net;
using k8s;
using Weft.Inventory;

namespace Weft.Tests.Inventory;

public class HotPathAllocationTests
{
    [Fact]
    public void WorkloadLookup_ServiceResolution_AndPick_AllocateNothing()
    {
        var snapshot = InventoryBuilder.Build(KubernetesYaml.LoadAllFromString("""
            apiVersion: v1
            kind: Pod
            metadata: {name: a1, namespace: demo}
            spec: {nodeName: node1}
            status: {podIPs: [{ip: 10.244.1.2}, {ip: "fd00::1:2"}]}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: b, namespace: demo}
            spec: {clusterIPs: [10.96.0.10, "fd00:96::10"], ports: [{name: http, port: 80, targetPort: 8080}]}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: b-1, namespace: demo, labels: {kubernetes.io/service-name: b}}
            addressType: IPv4
            ports: [{name: http, port: 8080}]
            endpoints: [{addresses: [10.244.2.2]}, {addresses: [10.244.2.3]}]
            """).Cast<IKubernetesObject>());
        var podV4 = IPAddress.Parse("10.244.1.2");
        var podV6 = IPAddress.Parse("fd00::1:2");
        var vipV4 = IPEndPoint.Parse("10.96.0.10:80");
        var vipV6 = IPEndPoint.Parse("[fd00:96::10]:80");

        void Lookups()
        {
            Assert.True(snapshot.TryGetWorkload(podV4, out _));
            Assert.True(snapshot.TryGetWorkload(podV6, out _));
            Assert.True(snapshot.TryResolveService(vipV4, out var target));
            Assert.NotNull(target.Pick());
            Assert.True(snapshot.TryResolveService(vipV6, out _));
            Assert.False(snapshot.GetLocalEnrolledWorkloads("node1").IsDefault);
        }

        Lookups(); // warm up: first calls may JIT and initialize statics
        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < 1000; i++)
        {
            Lookups();
        }

        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }
}
