using System.Text.Json;
using k8s.Models;
using Weft.Capture;
using Weft.Harness;
using Weft.Tests.EndToEnd;
using static Weft.Tests.Inventory.Kubernetes.KubernetesObjects;

namespace Weft.Tests.Inventory.Kubernetes;

/// <summary>
/// A real agent in Kubernetes mode: it learns the cluster from the fake API server, finds each pod's network
/// namespace through a cgroup laid out like kubelet's, enrolls it, and captures its traffic.
/// <code>
///  node1 netns: fake API server (127.0.0.1) ◄── weft agent --kubernetes --kubeconfig ... --pod-cgroup-root NODE_CGROUP
///  NODE_CGROUP/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod&lt;uid_&gt;.slice/cri-containerd-*.scope  (a1, systemd driver)
///  NODE_CGROUP/kubepods/besteffort/pod&lt;uid&gt;/&lt;container id&gt;                                                   (b1, cgroupfs driver)
/// </code>
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class KubernetesEnrollmentTests
{
    private const string UidA = "6a1d2c3b-0000-4000-8000-0000000000a1";
    private const string UidB = "6a1d2c3b-0000-4000-8000-0000000000b1";
    private static readonly TimeSpan Long = TimeSpan.FromSeconds(30);

    [PrivilegedFact]
    public async Task PodFoundThroughItsCgroup_IsEnrolledAndItsTrafficCaptured_ThenUnenrolledWhenDeleted()
    {
        await using var cluster = await NetnsCluster.CreateAsync(new ClusterSpec(
            new NodeSpec("node1", new PodSpec("demo", "a1"), new PodSpec("demo", "b1"))));
        var node = cluster.Node("node1");
        var a1 = cluster.Pod("demo", "a1");
        var b1 = cluster.Pod("demo", "b1");
        var pins = $"/sys/fs/bpf/weft-{cluster.RunId}-node1";
        var work = Directory.CreateTempSubdirectory("weft-kube-e2e-").FullName;
        var api = FakeApiServer.Start(port => NetNamespace.Run(node.NetnsPath, () => FakeApiServer.Loopback(port)));
        try
        {
            // Containers as a runtime makes them: a sandbox holding the pod's netns, then the app.
            var a1Pod = Path.Join(node.CgroupPath, PodNetns.RelativePath(CgroupDriver.Systemd, PodQosClass.Burstable, UidA));
            var b1Pod = Path.Join(node.CgroupPath, PodNetns.RelativePath(CgroupDriver.Cgroupfs, PodQosClass.BestEffort, UidB));
            var b1Sandbox = Container(cluster, b1, Path.Join(b1Pod, "5b1d0000"), "/bin/sleep", "infinity");
            var (file, serveArgs) = WeftExecutable.Command(["app", "serve", "--port", "8080"]);
            await using var server = Container(cluster, b1, Path.Join(b1Pod, "0a990000"), file, [.. serveArgs]);

            api.Apply(Namespace("demo", meshEnabled: true));
            // a1 claims b1's namespace by annotation, which anyone who may edit a pod could write: never believed.
            var claim = new Dictionary<string, string> { ["weft.dev/netns"] = b1.NetnsPath };
            api.Apply(Pod("demo", "a1", "node1", a1.Address.ToString(), UidA, "Burstable", annotations: claim));
            api.Apply(Pod("demo", "b1", "node1", b1.Address.ToString(), UidB, "BestEffort"));
            api.Apply(Service("demo", "b", "10.96.0.10", 80, 8080));
            api.Apply(Slice("demo", "b-1", "b", 8080, (b1.Address.ToString(), true)));
            var kubeconfig = api.WriteKubeconfig(Path.Join(work, "kubeconfig"));

            await using var agent = node.StartWeft("agent", "--kubernetes", "--kubeconfig", kubeconfig, "--node", "node1",
                "--cgroup", node.CgroupPath, "--pod-cgroup-root", node.CgroupPath, "--bpffs", pins, "--drain-seconds", "1", "--admin", "off");
            await MeshCluster.WaitForStderrAsync(agent, l => l.Contains("demo/b1: enrolled", StringComparison.Ordinal), Long);

            // a1 is in the API before its sandbox runs: the agent waits for a process in its cgroup, then enrolls it
            // without any further API change.
            await MeshCluster.WaitForStderrAsync(agent, l => l.Contains("demo/a1: enrolled but no network namespace known yet", StringComparison.Ordinal), Long);
            var a1Sandbox = Container(cluster, a1, Path.Join(a1Pod, "cri-containerd-5a4d.scope"), "/bin/sleep", "infinity");
            await MeshCluster.WaitForStderrAsync(agent, l => l.Contains("demo/a1: enrolled (", StringComparison.Ordinal), Long);

            // Each pod's namespace came from a process in its own cgroup, not from any annotation.
            Assert.Contains(agent.StderrLines, l => l.Contains($"demo/a1: enrolled (netns /proc/{a1Sandbox.Pid}/ns/net", StringComparison.Ordinal));
            Assert.Contains(agent.StderrLines, l => l.Contains($"demo/b1: enrolled (netns /proc/{b1Sandbox.Pid}/ns/net", StringComparison.Ordinal));

            var (sendFile, sendArgs) = WeftExecutable.Command(["app", "send", "--to", "10.96.0.10:80", "--bytes", "65536", "--timeout-ms", "10000"]);
            await using (var client = Container(cluster, a1, Path.Join(a1Pod, "cri-containerd-c1e7.scope"), sendFile, [.. sendArgs]))
            {
                var exit = await client.WaitForExitAsync(Long);
                Assert.True(exit == 0, $"client exit {exit}\n{client.Stdout}\n{client.Stderr}\nagent:\n{agent.Stderr}");
            }

            var outbound = await PodTrafficTests.WaitForFlowAsync(agent, f => f.GetProperty("direction").GetString() == "outbound");
            Assert.Equal("demo/a1", outbound.GetProperty("source_workload").GetString());
            Assert.Equal("10.96.0.10:80", outbound.GetProperty("original_destination").GetString());
            Assert.Equal("demo/b1", outbound.GetProperty("destination_workload").GetString());
            Assert.Equal(65536, outbound.GetProperty("bytes_sent").GetInt64());

            // Deleting the pod from the API unenrolls it.
            api.Delete<V1Pod>("demo", "a1");
            await MeshCluster.WaitForStderrAsync(agent, l => l.Contains("demo/a1: unenrolled", StringComparison.Ordinal), Long);

            agent.Stop();
            await agent.WaitForExitAsync(Long);
        }
        finally
        {
            await api.DisposeAsync();
            NetNamespace.Release(node.NetnsPath);
            if (Directory.Exists(pins))
            {
                BpfCapture.Uninstall(pins);
            }

            Directory.Delete(work, recursive: true);
        }
    }

    /// <summary>A process in the pod's netns and in a container cgroup below the pod's kubelet-style directory.</summary>
    private static ManagedProcess Container(NetnsCluster cluster, ClusterPod pod, string cgroup, string file, params string[] args)
    {
        Directory.CreateDirectory(cgroup);
        return cluster.Start(cgroup, pod.NetnsPath, $"{Path.GetFileName(file)} in {pod.Namespace}/{pod.Name} ({Path.GetFileName(cgroup)})", file, args, null);
    }
}
