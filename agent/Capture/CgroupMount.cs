using System.Text;

namespace Weft.Capture;

/// <summary>Where the cgroup v2 hierarchy is mounted: read from mountinfo, never assumed.</summary>
public static class CgroupMount
{
    /// <summary>The cgroup2 mount point from /proc/self/mountinfo (hybrid hosts mount it at /sys/fs/cgroup/unified).</summary>
    public static string FindV2()
    {
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            // "36 35 0:30 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw": the fs type follows " - ".
            var separator = line.IndexOf(" - ", StringComparison.Ordinal);
            if (separator < 0)
            {
                continue;
            }

            var after = line[(separator + 3)..].Split(' ');
            var before = line[..separator].Split(' ');
            if (after.Length > 0 && after[0] == "cgroup2" && before.Length > 4)
            {
                return UnescapeMountPath(before[4]);
            }
        }

        throw new CaptureException("no cgroup2 file system is mounted (looked in /proc/self/mountinfo); mount one with 'mount -t cgroup2 none /sys/fs/cgroup'");
    }

    private static string UnescapeMountPath(string field)
    {
        // mountinfo escapes space, tab, newline and backslash as \ooo
        if (!field.Contains('\\'))
        {
            return field;
        }

        var sb = new StringBuilder();
        for (var i = 0; i < field.Length; i++)
        {
            if (field[i] == '\\' && i + 3 < field.Length)
            {
                sb.Append((char)Convert.ToInt32(field.Substring(i + 1, 3), 8));
                i += 3;
            }
            else
            {
                sb.Append(field[i]);
            }
        }

        return sb.ToString();
    }
}
