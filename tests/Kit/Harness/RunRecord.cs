using System.Globalization;

namespace Weft.Harness;

/// <summary>
/// /run/weft-harness/RUNID/owner: which process owns a run (pid and its start time, so a reused pid
/// is not mistaken for the owner) and where its cgroup is. Written before anything is created, so a
/// run that crashed at any step can be found and removed by <see cref="NetnsCluster.CleanupStale"/>.
/// </summary>
internal sealed record RunRecord(string RunId, int OwnerPid, ulong OwnerStartTime, string CgroupRoot)
{
    public const string Directory = "/run/weft-harness";

    public string RecordDirectory => Path.Join(Directory, RunId);

    public static RunRecord ForCurrentProcess(string runId, string cgroupRoot)
    {
        var pid = Environment.ProcessId;
        return new RunRecord(runId, pid, StartTimeOf(pid) ?? 0, cgroupRoot);
    }

    public void Write()
    {
        System.IO.Directory.CreateDirectory(RecordDirectory);
        File.WriteAllLines(Path.Join(RecordDirectory, "owner"),
        [
            OwnerPid.ToString(CultureInfo.InvariantCulture),
            OwnerStartTime.ToString(CultureInfo.InvariantCulture),
            CgroupRoot,
        ]);
    }

    public void Delete()
    {
        if (System.IO.Directory.Exists(RecordDirectory))
        {
            System.IO.Directory.Delete(RecordDirectory, recursive: true);
        }
    }

    public static IEnumerable<RunRecord> ReadAll()
    {
        if (!System.IO.Directory.Exists(Directory))
        {
            yield break;
        }

        foreach (var dir in System.IO.Directory.EnumerateDirectories(Directory))
        {
            string[] lines;
            try
            {
                lines = File.ReadAllLines(Path.Join(dir, "owner"));
            }
            catch (IOException)
            {
                continue;
            }

            if (lines.Length >= 3
                && int.TryParse(lines[0], CultureInfo.InvariantCulture, out var pid)
                && ulong.TryParse(lines[1], CultureInfo.InvariantCulture, out var start))
            {
                yield return new RunRecord(Path.GetFileName(dir), pid, start, lines[2]);
            }
        }
    }

    public bool OwnerIsAlive() => StartTimeOf(OwnerPid) is { } start && start == OwnerStartTime;

    /// <summary>Field 22 of /proc/PID/stat (start time in clock ticks since boot), or null when no such process.</summary>
    internal static ulong? StartTimeOf(int pid)
    {
        string stat;
        try
        {
            stat = File.ReadAllText($"/proc/{pid}/stat");
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }

        // the command name (field 2) may hold spaces and parentheses: count fields after the last ')'
        var rest = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return rest.Length > 19 && ulong.TryParse(rest[19], CultureInfo.InvariantCulture, out var start) ? start : null;
    }
}
