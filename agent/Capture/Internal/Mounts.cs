using System.Runtime.InteropServices;
using System.Text;
using Tmds.Linux;

namespace Weft.Capture.Internal;

/// <summary>
/// Which filesystem holds a path, read from /proc/self/mountinfo (never assumed): bpffs for pins,
/// cgroup2 for the attach point.
/// </summary>
internal static class Mounts
{
    internal sealed record Mount(string MountPoint, string FsType);

    internal static IReadOnlyList<Mount> Read()
    {
        var mounts = new List<Mount>();
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
            var fields = line.Split(' ');
            var dash = Array.IndexOf(fields, "-");
            if (fields.Length < 5 || dash < 0 || dash + 1 >= fields.Length)
            {
                continue;
            }
            mounts.Add(new Mount(Unescape(fields[4]), fields[dash + 1]));
        }
        return mounts;
    }

    /// <summary>The mount that holds <paramref name="path"/> (the last, i.e. topmost, of the longest mount point).</summary>
    internal static Mount? Containing(string path)
    {
        var full = Path.GetFullPath(path).TrimEnd('/');
        Mount? best = null;
        var bestLength = -1;
        foreach (var m in Read())
        {
            var mp = m.MountPoint.TrimEnd('/');
            var inside = full == mp || full.StartsWith(mp + "/", StringComparison.Ordinal);
            if (inside && mp.Length >= bestLength)
            {
                best = m;
                bestLength = mp.Length;
            }
        }
        return best;
    }

    internal static IEnumerable<string> MountPointsOf(string fsType) =>
        Read().Where(m => m.FsType == fsType).Select(m => m.MountPoint).Distinct();

    /// <summary>
    /// Makes sure <paramref name="pinRoot"/> lies on bpffs; mounts bpffs at /sys/fs/bpf when the pins
    /// belong there and nothing is mounted yet (it is not mounted at boot on every distribution).
    /// </summary>
    internal static unsafe void EnsureBpfFs(string pinRoot)
    {
        const string Default = "/sys/fs/bpf";
        if (Containing(pinRoot)?.FsType == "bpf")
        {
            return;
        }
        var full = Path.GetFullPath(pinRoot);
        if (full.StartsWith(Default + "/", StringComparison.Ordinal) && Containing(Default)?.FsType != "bpf")
        {
            int rc;
            fixed (byte* source = "bpf\0"u8, target = Encoding.UTF8.GetBytes(Default + "\0"), type = "bpf\0"u8)
            {
                rc = LibC.mount(source, target, type, 0, null);
            }
            if (rc != 0)
            {
                var errno = LibC.errno;
                throw new CaptureException(
                    $"bpffs is not mounted at {Default} and mounting it failed ({Describe(errno)}); " +
                    $"mount it with `mount -t bpf bpf {Default}` (needs root / CAP_SYS_ADMIN)", errno);
            }
            Log.Info("capture", $"mounted bpffs at {Default}");
            if (Containing(pinRoot)?.FsType == "bpf")
            {
                return;
            }
        }
        var where = Containing(pinRoot);
        throw new CaptureException(
            $"pin root {pinRoot} is not on a bpf filesystem (it is on {where?.FsType ?? "?"} mounted at {where?.MountPoint ?? "?"}); " +
            $"use a directory under {Default} or mount bpffs there with `mount -t bpf bpf <dir>`");
    }

    /// <summary>Makes sure <paramref name="cgroupPath"/> is a directory of the cgroup v2 hierarchy.</summary>
    internal static void EnsureCgroup2(string cgroupPath)
    {
        var v2 = string.Join(", ", MountPointsOf("cgroup2"));
        if (!Directory.Exists(cgroupPath))
        {
            throw new CaptureException(
                $"cgroup {cgroupPath} does not exist; pass a cgroup v2 directory" +
                (v2.Length > 0 ? $" (cgroup2 is mounted at {v2})" : " (no cgroup2 is mounted: `mount -t cgroup2 none /sys/fs/cgroup`)"), LibC.ENOENT);
        }
        var fs = Containing(cgroupPath)?.FsType;
        if (fs != "cgroup2")
        {
            throw new CaptureException(
                $"{cgroupPath} is on {fs ?? "an unknown filesystem"}, not cgroup v2: eBPF connect/sockops hooks attach only to cgroup v2 directories; " +
                (v2.Length > 0 ? $"use a directory under {v2}" : "mount it with `mount -t cgroup2 none /sys/fs/cgroup`"));
        }
    }

    internal static string Describe(int errno) =>
        $"{ErrnoName(errno)}: {Marshal.GetPInvokeErrorMessage(errno)}";

    private static string ErrnoName(int errno) => errno switch
    {
        1 => "EPERM",
        2 => "ENOENT",
        7 => "E2BIG",
        9 => "EBADF",
        13 => "EACCES",
        16 => "EBUSY",
        17 => "EEXIST",
        22 => "EINVAL",
        28 => "ENOSPC",
        67 => "ENOLINK",
        95 => "EOPNOTSUPP",
        _ => $"errno {errno}",
    };

    private static string Unescape(string s)
    {
        if (!s.Contains('\\'))
        {
            return s;
        }
        var sb = new StringBuilder();
        for (var i = 0; i < s.Length; i++)
        {
            if (s[i] == '\\' && i + 3 < s.Length)
            {
                sb.Append((char)Convert.ToInt32(s.Substring(i + 1, 3), 8));
                i += 3;
            }
            else
            {
                sb.Append(s[i]);
            }
        }
        return sb.ToString();
    }
}
