using Weft.Capture;

namespace Weft.Harness;

/// <summary>
/// The few cgroup v2 operations the harness needs: find the mount, make directories,
/// move a process, kill a subtree and remove it again.
/// </summary>
internal static class Cgroup2
{
    /// <summary>The cgroup2 mount point (see <see cref="CgroupMount.FindV2"/>).</summary>
    public static string FindMount()
    {
        try
        {
            return CgroupMount.FindV2();
        }
        catch (CaptureException e)
        {
            throw new HarnessException(e.Message, e);
        }
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
}
