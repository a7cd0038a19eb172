using System.Text;

namespace Weft.Harness;

/// <summary>
/// The few cgroup v2 operations the harness needs: find the mount, make directories,
/// move a process, kill a subtree and remove it again.
/// </summary>
public static class Cgroup2
{
    /// <summary>The cgroup2 mount point from /proc/self/mountinfo (hybrid hosts mount it at /sys/fs/cgroup/unified).</summary>
    public static string FindMount()
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

        throw new HarnessException("no cgroup2 file system is mounted (looked in /proc/self/mountinfo); mount one with 'mount -t cgroup2 none /sys/fs/cgroup'");
    }

    /// <summary>The cgroup v2 directory a process is in, read from /proc/PID/cgroup (the "0::" line), or null when it is gone.</summary>
    public static string? PathOf(int pid)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/cgroup"))
            {
                if (line.StartsWith("0::", StringComparison.Ordinal))
                {
                    var relative = line[3..];
                    return Path.Join(FindMount(), relative);
                }
            }
        }
        catch (IOException)
        {
        }

        return null;
    }

    internal static void MoveProcess(string cgroup, int pid) =>
        File.WriteAllText(Path.Join(cgroup, "cgroup.procs"), pid.ToString(System.Globalization.CultureInfo.InvariantCulture));

    internal static IReadOnlyList<int> Pids(string cgroup)
    {
        var pids = new List<int>();
        if (!Directory.Exists(cgroup))
        {
            return pids;
        }

        foreach (var dir in Directory.EnumerateDirectories(cgroup, "*", SearchOption.AllDirectories).Prepend(cgroup))
        {
            try
            {
                foreach (var line in File.ReadLines(Path.Join(dir, "cgroup.procs")))
                {
                    if (int.TryParse(line, out var pid))
                    {
                        pids.Add(pid);
                    }
                }
            }
            catch (IOException)
            {
                // removed while we looked
            }
        }

        return pids;
    }

    /// <summary>
    /// SIGKILLs every process in the subtree. Only processes the harness started (and their children,
    /// which inherit the cgroup) can be in a run's cgroups, so this never reaches a stranger.
    /// </summary>
    internal static void KillAll(string cgroup)
    {
        if (!Directory.Exists(cgroup))
        {
            return;
        }

        var killFile = Path.Join(cgroup, "cgroup.kill");
        if (File.Exists(killFile))
        {
            File.WriteAllText(killFile, "1");
            return;
        }

        // kernels before 5.14 have no cgroup.kill
        foreach (var pid in Pids(cgroup))
        {
            _ = Tmds.Linux.LibC.kill(pid, Tmds.Linux.LibC.SIGKILL);
        }
    }

    /// <summary>Removes the directory and all below it, deepest first, waiting for killed processes to leave.</summary>
    internal static void RemoveTree(string cgroup, TimeSpan timeout)
    {
        if (!Directory.Exists(cgroup))
        {
            return;
        }

        var dirs = Directory.EnumerateDirectories(cgroup, "*", SearchOption.AllDirectories)
            .Prepend(cgroup)
            .OrderByDescending(d => d.Length)
            .ToList();
        var deadline = DateTime.UtcNow + timeout;
        foreach (var dir in dirs)
        {
            while (true)
            {
                try
                {
                    // rmdir(2): a cgroup directory holds only kernel files, which go with it
                    Directory.Delete(dir, recursive: false);
                    break;
                }
                catch (DirectoryNotFoundException)
                {
                    break;
                }
                catch (IOException) when (DateTime.UtcNow < deadline)
                {
                    // EBUSY until the killed processes have exited
                    Thread.Sleep(20);
                }
                catch (IOException e)
                {
                    throw new HarnessException($"cannot remove cgroup {dir}: {e.Message} (pids still inside: {string.Join(' ', Pids(dir))})", e);
                }
            }
        }
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
