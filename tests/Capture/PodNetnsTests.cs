using Weft.Capture;

namespace Weft.Tests.Capture;

/// <summary>
/// Pod network namespace discovery on fake cgroup and /proc trees laid out the way kubelet and the container
/// runtimes lay them out, for both cgroup drivers and every QoS class.
/// </summary>
public sealed class PodNetnsTests : IDisposable
{
    private const string Uid = "3f2a9c1e-8b7d-4e6f-a5c4-0123456789ab";
    private readonly string _root = Directory.CreateTempSubdirectory("weft-podnetns-").FullName;

    private string Cgroup => Path.Join(_root, "cgroup");

    private string Proc => Path.Join(_root, "proc");

    public void Dispose() => Directory.Delete(_root, recursive: true);

    public static TheoryData<CgroupDriver, string, string> Layouts => new()
    {
        { CgroupDriver.Systemd, "Guaranteed", "kubepods.slice/kubepods-pod3f2a9c1e_8b7d_4e6f_a5c4_0123456789ab.slice" },
        { CgroupDriver.Systemd, "Burstable", "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3f2a9c1e_8b7d_4e6f_a5c4_0123456789ab.slice" },
        { CgroupDriver.Systemd, "BestEffort", "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3f2a9c1e_8b7d_4e6f_a5c4_0123456789ab.slice" },
        { CgroupDriver.Cgroupfs, "Guaranteed", "kubepods/pod3f2a9c1e-8b7d-4e6f-a5c4-0123456789ab" },
        { CgroupDriver.Cgroupfs, "Burstable", "kubepods/burstable/pod3f2a9c1e-8b7d-4e6f-a5c4-0123456789ab" },
        { CgroupDriver.Cgroupfs, "BestEffort", "kubepods/besteffort/pod3f2a9c1e-8b7d-4e6f-a5c4-0123456789ab" },
    };

    [Theory]
    [MemberData(nameof(Layouts))]
    public void PodCgroup_ForEachDriverAndQosClass_IsWhereKubeletPutsIt(CgroupDriver driver, string qosClass, string expected)
    {
        Assert.Equal(expected, PodNetns.RelativePath(driver, PodNetns.ParseQosClass(qosClass), Uid));
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void Find_ReadsAPidFromAContainerAndReturnsItsNetns(CgroupDriver driver, string qosClass, string podDirectory)
    {
        var container = driver == CgroupDriver.Systemd ? "cri-containerd-0a1b2c.scope" : "0a1b2c3d4e";
        var emptyContainer = driver == CgroupDriver.Systemd ? "cri-containerd-ffff.scope" : "ffff0000";
        MakeCgroup(Path.Join(podDirectory, emptyContainer)); // an exited container: no pids
        MakeCgroup(Path.Join(podDirectory, container), 4321, 4400);
        MakeProcess(4321);
        MakeProcess(4400);
        DecoyNeighbours();

        var found = new PodNetns(Cgroup, Proc).Find(Uid, PodNetns.ParseQosClass(qosClass));

        Assert.NotNull(found);
        Assert.Equal(Path.Join(Cgroup, podDirectory), found.PodCgroup);
        Assert.Equal(4321, found.Pid);
        Assert.Equal(Path.Join(Proc, "4321", "ns", "net"), found.NetnsPath);
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void Find_WithoutAQosClass_TriesEveryLevel(CgroupDriver driver, string qosClass, string podDirectory)
    {
        _ = driver;
        _ = qosClass;
        MakeCgroup(Path.Join(podDirectory, "c1"), 99);
        MakeProcess(99);

        Assert.Equal(99, new PodNetns(Cgroup, Proc).Find(Uid, PodQosClass.Unknown)?.Pid);
    }

    [Fact]
    public void Find_NestedUnderAnotherSlice_IsFoundBySearching()
    {
        // kind and kubelet's --cgroup-root put kubepods one or more levels down.
        MakeCgroup("kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod3f2a9c1e_8b7d_4e6f_a5c4_0123456789ab.slice/cri-containerd-1.scope", 555);
        MakeProcess(555);

        Assert.Equal(555, new PodNetns(Cgroup, Proc).Find(Uid, PodQosClass.BestEffort)?.Pid);
    }

    [Fact]
    public void Find_KeepsAPreferredPidWhileItLives_ThenMovesOn()
    {
        var pod = "kubepods/burstable/pod" + Uid;
        MakeCgroup(Path.Join(pod, "sandbox"), 10);
        MakeCgroup(Path.Join(pod, "app"), 20);
        MakeProcess(10);
        MakeProcess(20);
        var netns = new PodNetns(Cgroup, Proc);

        Assert.Equal(20, netns.Find(Uid, PodQosClass.Burstable, preferredPid: 20)?.Pid);

        // the preferred process exits: its pid leaves cgroup.procs and /proc
        File.WriteAllText(Path.Join(Cgroup, pod, "app", "cgroup.procs"), "");
        Directory.Delete(Path.Join(Proc, "20"), recursive: true);
        Assert.Equal(10, netns.Find(Uid, PodQosClass.Burstable, preferredPid: 20)?.Pid);
    }

    [Fact]
    public void Find_PodWithoutCgroupOrWithoutLiveProcess_IsNull()
    {
        var netns = new PodNetns(Cgroup, Proc);
        Directory.CreateDirectory(Cgroup);
        Assert.Null(netns.Find(Uid, PodQosClass.Burstable));

        // listed in cgroup.procs but already gone from /proc
        MakeCgroup("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3f2a9c1e_8b7d_4e6f_a5c4_0123456789ab.slice/cri-containerd-9.scope", 31337);
        Assert.Null(netns.Find(Uid, PodQosClass.Burstable));
    }

    [Fact]
    public void CgroupRoot_DefaultsToTheCgroup2Mount()
    {
        Assert.Equal(CgroupMount.FindV2(), new PodNetns().CgroupRoot);
    }

    private void MakeCgroup(string relative, params int[] pids)
    {
        var directory = Path.Join(Cgroup, relative);
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Join(directory, "cgroup.procs"), string.Concat(pids.Select(p => p + "\n")));
    }

    private void MakeProcess(int pid)
    {
        var ns = Path.Join(Proc, pid.ToString(), "ns");
        Directory.CreateDirectory(ns);
        File.WriteAllText(Path.Join(ns, "net"), "");
    }

    /// <summary>Other pods in every layout, so a match by prefix or the wrong QoS level would show.</summary>
    private void DecoyNeighbours()
    {
        const string other = "3f2a9c1e-8b7d-4e6f-a5c4-0123456789ac";
        foreach (var driver in new[] { CgroupDriver.Systemd, CgroupDriver.Cgroupfs })
        {
            foreach (var qos in new[] { PodQosClass.Guaranteed, PodQosClass.Burstable, PodQosClass.BestEffort })
            {
                MakeCgroup(Path.Join(PodNetns.RelativePath(driver, qos, other), "c"), 1);
            }
        }

        MakeProcess(1);
    }
}
