using System.Globalization;

namespace Weft.Capture;

/// <summary>
/// Finds a Kubernetes pod's network namespace from its cgroup, the way kubelet lays cgroups out:
/// <code>
///   QoS class   systemd driver                                                              cgroupfs driver
///   Guaranteed  kubepods.slice/kubepods-pod&lt;uid_&gt;.slice/                                       kubepods/pod&lt;uid&gt;/
///   Burstable   kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod&lt;uid_&gt;.slice/   kubepods/burstable/pod&lt;uid&gt;/
///   BestEffort  kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod&lt;uid_&gt;.slice/ kubepods/besteffort/pod&lt;uid&gt;/
///                 └─ one directory per container (cri-containerd-&lt;id&gt;.scope, crio-&lt;id&gt;.scope, &lt;id&gt;) ─► cgroup.procs ─► pid
///                                                                              ─► /proc/&lt;pid&gt;/ns/net
/// </code>
/// (&lt;uid_&gt; is the pod UID with '-' replaced by '_', as systemd slice names cannot carry dashes.)
/// Every container of a pod, the sandbox included, shares the pod's network namespace, so any live
/// process in the pod's cgroup names it. When the usual places miss (kubelet's --cgroup-root, nested
/// layouts such as kind's kubelet.slice), a search a few levels deep finds the pod's directory by name.
/// </summary>
internal sealed class PodNetns
{
    private const int SearchDepth = 6;
    private readonly string _procRoot;

    /// <param name="cgroupRoot">Where kubelet's kubepods hierarchy lives; null: the cgroup v2 mount (<see cref="CgroupMount.FindV2"/>), which is /sys/fs/cgroup or, on hybrid hosts, /sys/fs/cgroup/unified.</param>
    /// <param name="procRoot">The host's /proc (the agent runs with hostPID).</param>
    public PodNetns(string? cgroupRoot = null, string procRoot = "/proc")
    {
        CgroupRoot = cgroupRoot ?? CgroupMount.FindV2();
        _procRoot = procRoot;
    }

    public string CgroupRoot { get; }

    /// <summary>The pod's cgroup directory, relative to <see cref="CgroupRoot"/>, for one driver and QoS class.</summary>
    public static string RelativePath(CgroupDriver driver, PodQosClass qos, string podUid)
    {
        ArgumentException.ThrowIfNullOrEmpty(podUid);
        if (driver == CgroupDriver.Systemd)
        {
            var escaped = podUid.Replace('-', '_');
            return qos switch
            {
                PodQosClass.Guaranteed => $"kubepods.slice/kubepods-pod{escaped}.slice",
                PodQosClass.Burstable => $"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{escaped}.slice",
                _ => $"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{escaped}.slice",
            };
        }

        return qos switch
        {
            PodQosClass.Guaranteed => $"kubepods/pod{podUid}",
            PodQosClass.Burstable => $"kubepods/burstable/pod{podUid}",
            _ => $"kubepods/besteffort/pod{podUid}",
        };
    }

    /// <summary>Reads status.qosClass; anything else (a pod not started yet has none) is <see cref="PodQosClass.Unknown"/>.</summary>
    public static PodQosClass ParseQosClass(string? qosClass) => qosClass switch
    {
        "Guaranteed" => PodQosClass.Guaranteed,
        "Burstable" => PodQosClass.Burstable,
        "BestEffort" => PodQosClass.BestEffort,
        _ => PodQosClass.Unknown,
    };

    /// <summary>The pod's cgroup directory (absolute), or null when no cgroup of this pod exists (yet).</summary>
    public string? FindPodCgroup(string podUid, PodQosClass qos)
    {
        ArgumentException.ThrowIfNullOrEmpty(podUid);
        var classes = qos == PodQosClass.Unknown
            ? [PodQosClass.Burstable, PodQosClass.BestEffort, PodQosClass.Guaranteed]
            : new[] { qos };
        foreach (var driver in new[] { CgroupDriver.Systemd, CgroupDriver.Cgroupfs })
        {
            foreach (var qosClass in classes)
            {
                var candidate = Path.Join(CgroupRoot, RelativePath(driver, qosClass, podUid));
                if (Directory.Exists(candidate))
                {
                    return candidate;
                }
            }
        }

        return Search(CgroupRoot, podUid, SearchDepth);
    }

    /// <summary>
    /// The pod's network namespace, or null when the pod has no cgroup or no live process yet. A <paramref name="preferredPid"/>
    /// still in the pod is kept, so the path stays the same from one lookup to the next; otherwise the lowest pid wins
    /// (usually the sandbox's, which lives as long as the pod).
    /// </summary>
    public PodNetnsLocation? Find(string podUid, PodQosClass qos, int? preferredPid = null)
    {
        var podCgroup = FindPodCgroup(podUid, qos);
        if (podCgroup is null)
        {
            return null;
        }

        var pids = PidsBelow(podCgroup);
        if (preferredPid is { } preferred && pids.Contains(preferred) && NetnsExists(preferred))
        {
            return new PodNetnsLocation(podCgroup, preferred, NetnsPath(preferred));
        }

        foreach (var pid in pids)
        {
            // A process may exit between reading cgroup.procs and looking at /proc.
            if (NetnsExists(pid))
            {
                return new PodNetnsLocation(podCgroup, pid, NetnsPath(pid));
            }
        }

        return null;
    }

    private string NetnsPath(int pid) => Path.Join(_procRoot, pid.ToString(CultureInfo.InvariantCulture), "ns", "net");

    private bool NetnsExists(int pid) => File.Exists(NetnsPath(pid)) || Directory.Exists(Path.Join(_procRoot, pid.ToString(CultureInfo.InvariantCulture), "ns", "net"));

    /// <summary>Pids in the pod directory and its container directories, lowest first; empty containers are skipped.</summary>
    private static SortedSet<int> PidsBelow(string podCgroup)
    {
        var pids = new SortedSet<int>();
        IEnumerable<string> directories;
        try
        {
            directories = Directory.EnumerateDirectories(podCgroup).Prepend(podCgroup).ToList();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return pids; // the pod went away while we looked
        }

        foreach (var directory in directories)
        {
            try
            {
                foreach (var line in File.ReadLines(Path.Join(directory, "cgroup.procs")))
                {
                    if (int.TryParse(line, NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && pid > 0)
                    {
                        pids.Add(pid);
                    }
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // no cgroup.procs (a plain directory) or the container went away
            }
        }

        return pids;
    }

    private static string? Search(string root, string podUid, int depth)
    {
        var cgroupfsName = "pod" + podUid;
        var systemdSuffix = "-pod" + podUid.Replace('-', '_') + ".slice";
        var level = new List<string> { root };
        for (var i = 0; i < depth && level.Count > 0; i++)
        {
            var next = new List<string>();
            foreach (var directory in level)
            {
                IEnumerable<string> children;
                try
                {
                    children = Directory.EnumerateDirectories(directory).ToList();
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    continue;
                }

                foreach (var child in children)
                {
                    var name = Path.GetFileName(child);
                    if (name == cgroupfsName || name.EndsWith(systemdSuffix, StringComparison.Ordinal))
                    {
                        return child;
                    }

                    next.Add(child);
                }
            }

            level = next;
        }

        return null;
    }
}

/// <summary>kubelet's cgroup drivers: systemd names slices, cgroupfs plain directories.</summary>
public enum CgroupDriver
{
    Systemd,
    Cgroupfs,
}

/// <summary>A pod's QoS class (status.qosClass): it decides the level of the pod's cgroup under kubepods.</summary>
internal enum PodQosClass
{
    Unknown,
    Guaranteed,
    Burstable,
    BestEffort,
}

/// <summary>Where a pod's network namespace was found: its cgroup, the process that names it, and /proc/PID/ns/net.</summary>
internal sealed record PodNetnsLocation(string PodCgroup, int Pid, string NetnsPath);
