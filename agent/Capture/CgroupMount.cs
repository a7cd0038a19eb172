using Weft.Capture.Internal;

namespace Weft.Capture;

/// <summary>Where the cgroup v2 hierarchy is mounted: read from mountinfo, never assumed.</summary>
internal static class CgroupMount
{
    /// <summary>The cgroup2 mount point from /proc/self/mountinfo (hybrid hosts mount it at /sys/fs/cgroup/unified).</summary>
    public static string FindV2() =>
        Mounts.MountPointsOf("cgroup2").FirstOrDefault()
        ?? throw new CaptureException("no cgroup2 file system is mounted (looked in /proc/self/mountinfo); mount one with 'mount -t cgroup2 none /sys/fs/cgroup'");
}
