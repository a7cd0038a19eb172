using System.Net;
using k8s;
using Weft.Inventory;

namespace Weft.Tests.Inventory;

public class ServiceTargetTests
{
    private static ServiceTarget TargetWithEndpoints(int count)
    {
        var endpoints = string.Join("\n", Enumerable.Range(1, count).Select(i => $"- addresses: [10.1.0.{i}]"));
        var yaml = $"""
            apiVersion: v1
            kind: Service
            metadata: {"{"}name: spread, namespace: demo{"}"}
            spec: {"{"}clusterIP: 10.96.1.1, ports: [{"{"}port: 80, targetPort: 8080{"}"}]{"}"}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {"{"}name: spread-1, namespace: demo, labels: {"{"}kubernetes.io/service-name: spread{"}"}{"}"}
            addressType: IPv4
            endpoints:
            {endpoints}
            """;
        var snapshot = InventoryBuilder.Build(KubernetesYaml.LoadAllFromString(yaml).Cast<IKubernetesObject>());
        Assert.True(snapshot.TryResolveService(IPEndPoint.Parse("10.96.1.1:80"), out var target));
        Assert.Equal(count, target.ReadyEndpoints.Length);
        return target;
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(7)]
    public void Pick_SpreadsConnectionsEvenlyOverAllReadyEndpoints(int endpointCount)
    {
        var target = TargetWithEndpoints(endpointCount);

        var counts = new Dictionary<IPEndPoint, int>();
        for (var i = 0; i < endpointCount * 100; i++)
        {
            var picked = target.Pick()!;
            counts[picked] = counts.GetValueOrDefault(picked) + 1;
        }

        Assert.Equal(endpointCount, counts.Count);
        Assert.All(counts.Values, c => Assert.Equal(100, c));
    }

    [Fact]
    public void Pick_FromManyThreadsAtOnce_StillSpreadsEvenly()
    {
        var target = TargetWithEndpoints(5);
        var counts = new int[5];

        Parallel.For(0, 5 * 2000, new ParallelOptions { MaxDegreeOfParallelism = 4 }, _ =>
        {
            var picked = target.Pick()!;
            Interlocked.Increment(ref counts[picked.Address.GetAddressBytes()[3] - 1]);
        });

        Assert.All(counts, c => Assert.Equal(2000, c));
    }
}
