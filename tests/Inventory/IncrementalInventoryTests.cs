using System.Globalization;
using System.Net;
using System.Text;
using k8s;
using k8s.Models;
using Weft.Inventory;
using Weft.Policy;

namespace Weft.Tests.Inventory;

/// <summary>
/// An inventory updated one object at a time must show exactly what a build from scratch of the same objects
/// shows. Random change sequences over a small universe of names and addresses make the hard cases common: pods
/// sharing an IP or a name, a namespace whose enrollment flips under its pods, two services on one VIP, slices
/// moving between services, objects deleted and added again.
/// </summary>
public sealed class IncrementalInventoryTests
{
    private static readonly string[] Namespaces = ["a", "b", "c", "d"];
    private static readonly string[] PodIps = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "fd00::1", "fd00::2"];
    private static readonly string[] NodeIps = ["192.168.0.1", "192.168.0.2"];
    private static readonly string[] Vips = ["10.96.0.1", "10.96.0.2", "10.96.0.3", "fd00:96::1"];
    private static readonly int[] Ports = [80, 443, 8080];

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(6)]
    [InlineData(7)]
    [InlineData(8)]
    public void RandomChangeSequence_AppliedOneByOne_EqualsABuildFromScratchAfterEveryStep(int seed)
    {
        var random = new Random(seed);
        var state = new InventoryState(PolicyKinds.DefaultMeshRootNamespace);
        var live = new Dictionary<(Type, string), IKubernetesObject>();
        var order = new List<(Type, string)>(); // first arrival, as the state orders conflicts
        var earlier = new List<(InventorySnapshot Snapshot, string Seen)>();

        for (var step = 0; step < 400; step++)
        {
            var obj = RandomObject(random, out var id);
            var key = (obj.GetType(), id);
            if (live.ContainsKey(key) && random.Next(3) == 0)
            {
                state.Remove(key.Item1, id);
                live.Remove(key);
                order.Remove(key);
            }
            else
            {
                state.Upsert(id, obj);
                if (live.TryAdd(key, obj))
                {
                    order.Add(key);
                }
                else
                {
                    live[key] = obj;
                }
            }

            var incremental = state.Snapshot();
            var scratch = InventoryBuilder.Build(order.Select(k => live[k]));
            var seen = Describe(incremental);
            Assert.True(Describe(scratch) == seen, $"seed {seed}, step {step}: incremental differs from scratch\n{Diff(Describe(scratch), seen)}");
            if (step % 25 == 0)
            {
                earlier.Add((incremental, seen));
            }
        }

        // Snapshots a reader took earlier are untouched by every update since: persistent maps, never mutated.
        foreach (var (snapshot, seen) in earlier)
        {
            Assert.Equal(seen, Describe(snapshot));
        }
    }

    [Fact]
    public void UnchangedObjects_KeepTheirInstances_AcrossAnUpdate()
    {
        var state = new InventoryState(PolicyKinds.DefaultMeshRootNamespace);
        state.Upsert("ns", Namespace("a", enrolled: true));
        for (var i = 0; i < 50; i++)
        {
            state.Upsert($"p{i}", Pod("a", $"p{i}", $"10.1.0.{i + 1}"));
        }

        var before = state.Snapshot();
        state.Upsert("p7", Pod("a", "p7", "10.1.1.7"));
        state.Upsert("p8", Pod("a", "p8", "10.1.0.9")); // same content: nothing to do
        var after = state.Snapshot();

        Assert.True(before.TryGetWorkload(IPAddress.Parse("10.1.0.8"), out var moved));
        Assert.False(after.TryGetWorkload(IPAddress.Parse("10.1.0.8"), out _));
        Assert.True(after.TryGetWorkload(IPAddress.Parse("10.1.1.7"), out var movedNow));
        Assert.Equal(moved.Name, movedNow.Name);
        Assert.True(before.TryGetWorkload(IPAddress.Parse("10.1.0.9"), out var untouched));
        Assert.True(after.TryGetWorkload(IPAddress.Parse("10.1.0.9"), out var untouchedNow));
        Assert.Same(untouched, untouchedNow);
        Assert.Same(after, state.Snapshot()); // nothing changed since: the same snapshot
    }

    [Fact]
    public void NamespaceEnrollmentFlip_ReachesItsPodsWithoutTheirOwnLabel_Only()
    {
        var state = new InventoryState(PolicyKinds.DefaultMeshRootNamespace);
        state.Upsert("p1", Pod("a", "follows", "10.0.0.1", node: "n1"));
        state.Upsert("p2", Pod("a", "optout", "10.0.0.2", node: "n1", mesh: "disabled"));
        Assert.Empty(state.Snapshot().GetLocalEnrolledWorkloads("n1"));

        state.Upsert("ns", Namespace("a", enrolled: true));
        Assert.Equal(["follows"], state.Snapshot().GetLocalEnrolledWorkloads("n1").Select(w => w.Name));

        state.Remove(typeof(V1Namespace), "ns");
        Assert.Empty(state.Snapshot().GetLocalEnrolledWorkloads("n1"));
    }

    [Fact]
    public void PodHoldingAnIp_Deleted_TheNextClaimantTakesIt()
    {
        var state = new InventoryState(PolicyKinds.DefaultMeshRootNamespace);
        state.Upsert("first", Pod("a", "first", "10.0.0.1"));
        state.Upsert("second", Pod("a", "second", "10.0.0.1"));
        var shared = state.Snapshot();
        Assert.True(shared.TryGetWorkload(IPAddress.Parse("10.0.0.1"), out var owner));
        Assert.Equal("first", owner.Name);
        Assert.Contains(shared.Warnings, w => w.Contains("Pod a/second", StringComparison.Ordinal) && w.Contains("a/first", StringComparison.Ordinal));

        state.Remove(typeof(V1Pod), "first");
        var after = state.Snapshot();
        Assert.True(after.TryGetWorkload(IPAddress.Parse("10.0.0.1"), out owner));
        Assert.Equal("second", owner.Name);
        Assert.Empty(after.Warnings);
    }

    private static IKubernetesObject RandomObject(Random random, out string id)
    {
        switch (random.Next(10))
        {
            case 0:
                {
                    id = $"ns{random.Next(5)}";
                    return Namespace(Namespaces[random.Next(Namespaces.Length)], enrolled: random.Next(2) == 0, nameless: random.Next(20) == 0);
                }

            case 1:
            case 2:
                {
                    id = $"svc{random.Next(8)}";
                    var service = new V1Service
                    {
                        ApiVersion = "v1",
                        Kind = "Service",
                        Metadata = new V1ObjectMeta { Name = $"s{random.Next(4)}", NamespaceProperty = Namespaces[random.Next(2)] },
                        Spec = new V1ServiceSpec
                        {
                            ClusterIP = random.Next(15) == 0 ? "10.96.0.999" : random.Next(8) == 0 ? "None" : Vips[random.Next(Vips.Length)],
                            Ports = Enumerable.Range(0, random.Next(1, 3)).Select(i => new V1ServicePort
                            {
                                Name = i == 0 ? "http" : "other",
                                Port = Ports[random.Next(Ports.Length)],
                                TargetPort = random.Next(3) == 0 ? (IntOrString)"web" : random.Next(2) == 0 ? null : (IntOrString)"9090",
                                Protocol = random.Next(6) == 0 ? "UDP" : "TCP",
                            }).ToList(),
                        },
                    };
                    return service;
                }

            case 3:
            case 4:
                {
                    id = $"slice{random.Next(10)}";
                    var ipv6 = random.Next(4) == 0;
                    return new V1EndpointSlice
                    {
                        ApiVersion = "discovery.k8s.io/v1",
                        Kind = "EndpointSlice",
                        Metadata = new V1ObjectMeta
                        {
                            Name = $"e{random.Next(6)}",
                            NamespaceProperty = Namespaces[random.Next(2)],
                            Labels = random.Next(10) == 0 ? null : new Dictionary<string, string> { [InventoryBuilder.ServiceNameLabel] = $"s{random.Next(4)}" },
                        },
                        AddressType = ipv6 ? "IPv6" : "IPv4",
                        Ports = [new Discoveryv1EndpointPort { Name = random.Next(2) == 0 ? "http" : "web", Port = random.Next(10) == 0 ? 70000 : 8000 + random.Next(3), Protocol = "TCP" }],
                        Endpoints = Enumerable.Range(0, random.Next(0, 4)).Select(_ => new V1Endpoint
                        {
                            Addresses = [PodIps[random.Next(PodIps.Length)]],
                            Conditions = random.Next(3) == 0 ? null : new V1EndpointConditions { Ready = random.Next(3) != 0 },
                            NodeName = random.Next(2) == 0 ? "n1" : null,
                            TargetRef = new V1ObjectReference { Kind = "Pod", Name = $"p{random.Next(6)}" },
                        }).ToList(),
                    };
                }

            case 5:
                {
                    id = $"policy{random.Next(3)}";
                    return new V1Alpha1AuthorizationPolicy
                    {
                        ApiVersion = $"{PolicyKinds.Group}/{PolicyKinds.Version}",
                        Kind = V1Alpha1AuthorizationPolicy.KubeKind,
                        Metadata = new V1ObjectMeta { Name = $"ap{random.Next(3)}", NamespaceProperty = Namespaces[random.Next(2)] },
                        Spec = new AuthorizationPolicySpec { Action = random.Next(2) == 0 ? "ALLOW" : "DENY" },
                    };
                }

            default:
                {
                    id = $"pod{random.Next(24)}";
                    string[] ips = random.Next(12) switch
                    {
                        0 => [],
                        1 => ["10.0.0.01"],
                        2 => [PodIps[random.Next(5)], PodIps[5 + random.Next(2)]],
                        _ => new[] { PodIps[random.Next(PodIps.Length)] },
                    };
                    var pod = Pod(
                        Namespaces[random.Next(Namespaces.Length)],
                        $"p{random.Next(6)}",
                        ips,
                        node: random.Next(2) == 0 ? "n1" : "n2",
                        mesh: random.Next(6) switch { 0 => "enabled", 1 => "disabled", 2 => "maybe", _ => null },
                        hostNetwork: random.Next(10) == 0,
                        phase: random.Next(12) == 0 ? "Succeeded" : "Running");
                    pod.Metadata.Annotations = random.Next(8) == 0 ? new Dictionary<string, string> { [InventoryBuilder.FailOpenAnnotation] = "perhaps" } : null;
                    pod.Status.HostIP = NodeIps[random.Next(NodeIps.Length)];
                    return pod;
                }
        }
    }

    private static V1Namespace Namespace(string name, bool enrolled, bool nameless = false) => new()
    {
        ApiVersion = "v1",
        Kind = "Namespace",
        Metadata = new V1ObjectMeta
        {
            Name = nameless ? null : name,
            Labels = enrolled ? new Dictionary<string, string> { [InventoryBuilder.MeshLabel] = "enabled" } : null,
        },
    };

    private static V1Pod Pod(string ns, string name, string ip, string node = "n1", string? mesh = null) =>
        Pod(ns, name, [ip], node, mesh, hostNetwork: false, phase: "Running");

    private static V1Pod Pod(string ns, string name, string[] ips, string node, string? mesh, bool hostNetwork, string phase) => new()
    {
        ApiVersion = "v1",
        Kind = "Pod",
        Metadata = new V1ObjectMeta
        {
            Name = name,
            NamespaceProperty = ns,
            Uid = $"uid-{ns}-{name}",
            Labels = mesh is null ? new Dictionary<string, string> { ["app"] = name } : new Dictionary<string, string> { ["app"] = name, [InventoryBuilder.MeshLabel] = mesh },
        },
        Spec = new V1PodSpec { NodeName = node, HostNetwork = hostNetwork, ServiceAccountName = "sa-" + name },
        Status = new V1PodStatus { Phase = phase, PodIPs = ips.Select(ip => new V1PodIP { Ip = ip }).ToList() },
    };

    /// <summary>Everything a reader of the snapshot can observe, as text: the listings, every lookup over the universe, the warnings.</summary>
    private static string Describe(InventorySnapshot snapshot)
    {
        var text = new StringBuilder();
        foreach (var ns in snapshot.Namespaces)
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"namespace {ns.Name} enrolled={ns.Enrolled} labels={Labels(ns.Labels)}");
        }

        foreach (var w in snapshot.Workloads)
        {
            text.AppendLine(CultureInfo.InvariantCulture,
                $"workload {w} sa={w.ServiceAccount} node={w.NodeName} ips={string.Join(',', w.Addresses)} labels={Labels(w.Labels)} uid={w.Uid} phase={w.Phase} "
                + $"failOpen={w.FailOpen} enrolled={w.Enrolled} hostNetwork={w.HostNetwork} hosts={string.Join(',', w.HostAddresses)}");
        }

        foreach (var s in snapshot.Services)
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"service {s} vips={string.Join(',', s.ClusterIps)} ports={string.Join(',', s.Ports)}");
            foreach (var e in s.Endpoints)
            {
                text.AppendLine(CultureInfo.InvariantCulture,
                    $"  endpoint {e.Address} ready={e.Ready} serving={e.Serving} terminating={e.Terminating} node={e.NodeName} pod={e.Pod} slice={e.SliceName} ports={string.Join(',', e.Ports)}");
            }
        }

        foreach (var ip in PodIps.Concat(NodeIps).Concat(Vips))
        {
            var address = IPAddress.Parse(ip);
            text.AppendLine(CultureInfo.InvariantCulture,
                $"ip {ip}: workload={(snapshot.TryGetWorkload(address, out var owner) ? owner : "-")} node={snapshot.IsNodeAddress(address)}");
        }

        foreach (var vip in Vips)
        {
            foreach (var port in Ports)
            {
                if (snapshot.TryResolveService(new IPEndPoint(IPAddress.Parse(vip), port), out var target))
                {
                    text.AppendLine(CultureInfo.InvariantCulture, $"vip {vip}:{port} -> {target.Service} port={target.Port} ready={string.Join(',', target.ReadyEndpoints)}");
                }
            }
        }

        foreach (var node in new[] { "n1", "n2" })
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"local {node}: {string.Join(',', snapshot.GetLocalEnrolledWorkloads(node))}");
        }

        foreach (var ns in Namespaces)
        {
            foreach (var name in new[] { "s0", "s1", "s2", "s3" })
            {
                if (snapshot.TryGetService(ns, name, out var service))
                {
                    text.AppendLine(CultureInfo.InvariantCulture, $"by name {ns}/{name}: {service} {service.Endpoints.Length} endpoints");
                }
            }
        }

        text.AppendLine(CultureInfo.InvariantCulture, $"counts {snapshot.WorkloadCount} {snapshot.ServiceCount} {snapshot.WarningCount}");
        text.AppendLine(CultureInfo.InvariantCulture, $"policies {string.Join(',', snapshot.Policies.AuthorizationPolicies)}");
        foreach (var warning in snapshot.Warnings.Order(StringComparer.Ordinal))
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"warning {warning}");
        }

        return text.ToString();
    }

    private static string Labels(IReadOnlyDictionary<string, string> labels) =>
        string.Join(',', labels.OrderBy(l => l.Key, StringComparer.Ordinal).Select(l => $"{l.Key}={l.Value}"));

    private static string Diff(string expected, string actual)
    {
        var want = expected.Split('\n');
        var got = actual.Split('\n');
        return "only from scratch:\n" + string.Join('\n', want.Except(got)) + "\nonly incremental:\n" + string.Join('\n', got.Except(want));
    }
}
