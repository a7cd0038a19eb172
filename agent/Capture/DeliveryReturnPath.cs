using System.Diagnostics;
using System.Globalization;

namespace Weft.Capture;

/// <summary>
/// The return path of transparent delivery inside one pod's network namespace: the agent connects to
/// the app from the client's own address (IP_TRANSPARENT), and the app's replies, addressed to that
/// non-local client, must come back to the agent's socket over loopback instead of leaving the pod.
/// <code>
///  agent socket  SO_MARK=Mark, bound client:port  ──SYN (mark)──► lo ──► app (accepted socket takes the SYN's
///                                                                         mark: net.ipv4.tcp_fwmark_accept=1)
///  app reply     mark ──► ip rule fwmark Mark lookup Table ──► local default dev lo ──► agent socket
///  RST for a closed port: no socket, mark reflected from the SYN (net.ipv4/ipv6.fwmark_reflect=1)
/// </code>
/// No iptables and nothing in the node's namespace: two sysctls, one rule and one route per family,
/// all in the pod's namespace, removed when the pod is unenrolled. docs/capture.md says why.
/// </summary>
internal static class DeliveryReturnPath
{
    /// <summary>The mark on the agent's delivering sockets, and by inheritance on the app's replies ("wdel").</summary>
    public const uint Mark = 0x7764656c;

    /// <summary>The routing table holding the local default route, and the rule's priority (before main, 32766).</summary>
    public const int Table = 30570;

    private const string Component = "capture";
    private static readonly TimeSpan CommandTimeout = TimeSpan.FromSeconds(10);

    private static readonly string[] Sysctls =
    [
        "/proc/sys/net/ipv4/tcp_fwmark_accept",
        "/proc/sys/net/ipv4/fwmark_reflect",
        "/proc/sys/net/ipv6/fwmark_reflect",
    ];

    /// <summary>Sets the return path up in the namespace (idempotent); false, with the reason, when it cannot.</summary>
    public static bool TryInstall(string netnsPath, bool ipv6, out string? error)
    {
        try
        {
            // Idempotent rather than remove-then-add: in a rolling update the old agent's delivered
            // connections keep using the return path while the new agent sets it up again.
            NetNamespace.Run(netnsPath, () => WriteSysctls(ipv6, "1"));
            error = RunIp(netnsPath, "-4", RulesAndRoutes("add", ipv6: false), force: true, toleratedError: "File exists");
            if (error is null && ipv6)
            {
                error = RunIp(netnsPath, "-6", RulesAndRoutes("add", ipv6: true), force: true, toleratedError: "File exists");
            }

            return error is null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or CaptureException or System.ComponentModel.Win32Exception)
        {
            error = e.Message;
            return false;
        }
    }

    /// <summary>Removes the rules, routes and sysctls <see cref="TryInstall"/> set; whatever is already gone is skipped.</summary>
    public static void Remove(string netnsPath)
    {
        if (!File.Exists(netnsPath))
        {
            return; // the namespace is gone and took everything with it
        }

        // deletion of what is not there fails: -force goes on with the next line
        foreach (var family in new[] { "-4", "-6" })
        {
            var error = RunIp(netnsPath, family, RulesAndRoutes("del", ipv6: family == "-6"), force: true);
            if (error is not null)
            {
                Log.Debug(Component, $"{netnsPath}: removing the delivery return path ({family}): {error}");
            }
        }

        try
        {
            NetNamespace.Run(netnsPath, () => WriteSysctls(ipv6: true, "0"));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or CaptureException)
        {
            Log.Debug(Component, $"{netnsPath}: resetting the mark sysctls: {e.Message}");
        }
    }

    /// <summary>
    /// On uninstall: removes the return path from every network namespace whose cookie is in <paramref name="netnsCookies"/>
    /// (the pods that had capture's sk_lookup link), found through the processes under <paramref name="procRoot"/> and the
    /// named namespaces in /var/run/netns. Returns how many namespaces it cleaned.
    /// </summary>
    public static int RemoveFromNamespaces(IReadOnlySet<ulong> netnsCookies, string procRoot = "/proc", string namedRoot = "/var/run/netns")
    {
        if (netnsCookies.Count == 0)
        {
            return 0;
        }

        var seen = new HashSet<string>(StringComparer.Ordinal);
        var cleaned = 0;
        foreach (var path in Candidates(procRoot, namedRoot))
        {
            string? identity;
            try
            {
                // one look per namespace, whatever number of processes share it
                identity = new FileInfo(path).LinkTarget ?? path;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue;
            }

            if (!seen.Add(identity))
            {
                continue;
            }

            try
            {
                if (netnsCookies.Contains(NetNamespace.GetCookie(path)))
                {
                    Remove(path);
                    cleaned++;
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or CaptureException)
            {
                // the process or namespace went away meanwhile
            }
            finally
            {
                NetNamespace.Release(path);
            }
        }

        return cleaned;

        static IEnumerable<string> Candidates(string procRoot, string namedRoot)
        {
            if (Directory.Exists(namedRoot))
            {
                foreach (var named in Directory.EnumerateFiles(namedRoot))
                {
                    yield return named;
                }
            }

            foreach (var pid in Directory.EnumerateDirectories(procRoot))
            {
                if (int.TryParse(Path.GetFileName(pid), NumberStyles.None, CultureInfo.InvariantCulture, out _))
                {
                    yield return Path.Join(pid, "ns", "net");
                }
            }
        }
    }

    private static bool WriteSysctls(bool ipv6, string value)
    {
        foreach (var path in Sysctls)
        {
            // a namespace with IPv6 disabled has no net/ipv6 directory
            if (path.Contains("/ipv6/", StringComparison.Ordinal) && (!ipv6 || !File.Exists(path)))
            {
                continue;
            }

            File.WriteAllText(path, value);
        }

        return true;
    }

    /// <summary>The rule and the route of one family, as `ip -batch` lines (the family is ip's -4/-6 option).</summary>
    private static string RulesAndRoutes(string verb, bool ipv6)
    {
        var mark = Mark.ToString("x", CultureInfo.InvariantCulture);
        var table = Table.ToString(CultureInfo.InvariantCulture);
        var route = verb == "add" ? "replace" : verb;
        return $"""
            rule {verb} fwmark 0x{mark}/0xffffffff lookup {table} pref {table}
            route {route} local {(ipv6 ? "::/0" : "0.0.0.0/0")} dev lo table {table}

            """;
    }

    /// <summary>
    /// Runs `ip -batch -` inside the namespace (nsenter, so nothing touches the agent's own); null on success, or
    /// when every failed line failed with <paramref name="toleratedError"/>; else what ip said.
    /// </summary>
    private static string? RunIp(string netnsPath, string family, string batch, bool force, string? toleratedError = null)
    {
        var start = new ProcessStartInfo("nsenter")
        {
            RedirectStandardInput = true,
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add("--net=" + netnsPath);
        start.ArgumentList.Add("--");
        start.ArgumentList.Add("ip");
        start.ArgumentList.Add(family);
        if (force)
        {
            start.ArgumentList.Add("-force");
        }

        start.ArgumentList.Add("-batch");
        start.ArgumentList.Add("-");
        using var process = Process.Start(start) ?? throw new IOException("cannot start nsenter");
        var stderr = process.StandardError.ReadToEndAsync();
        var stdout = process.StandardOutput.ReadToEndAsync();
        process.StandardInput.Write(batch);
        process.StandardInput.Close();
        if (!process.WaitForExit(CommandTimeout))
        {
            process.Kill();
            return $"ip did not finish within {CommandTimeout.TotalSeconds:0} s";
        }

        _ = stdout.Result;
        if (process.ExitCode == 0)
        {
            return null;
        }

        var said = stderr.Result.Trim();
        var answers = said.Split('\n').Where(l => l.StartsWith("RTNETLINK answers:", StringComparison.Ordinal)).ToList();
        var tolerated = toleratedError is not null && answers.Count > 0 && answers.All(l => l.EndsWith(toleratedError, StringComparison.Ordinal))
            && said.Split('\n').All(l => l.StartsWith("RTNETLINK answers:", StringComparison.Ordinal) || l.StartsWith("Command failed", StringComparison.Ordinal));
        return tolerated ? null : $"ip exited with {process.ExitCode}: {said}";
    }
}
