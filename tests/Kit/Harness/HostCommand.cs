using System.Diagnostics;

namespace Weft.Harness;

/// <summary>
/// Runs a short configuration command (ip, sysctl) to completion and fails with its stderr.
/// No shell is involved: arguments go to execve as given, so names can never be reinterpreted.
/// </summary>
internal static class HostCommand
{
    public static string Run(string file, params string[] args)
    {
        // setsid: a second Ctrl-C at the terminal must not kill an `ip netns delete` of the teardown
        var info = new ProcessStartInfo("setsid")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        info.ArgumentList.Add(file);
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info) ?? throw new HarnessException($"could not start {file}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromSeconds(30)))
        {
            process.Kill();
            throw new HarnessException($"'{Describe(file, args)}' did not finish within 30 s");
        }

        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new HarnessException($"'{Describe(file, args)}' failed with exit code {process.ExitCode}: {stderr.Result.Trim()}");
        }

        return stdout.Result;
    }

    /// <summary>Runs <c>ip</c> with the given arguments; callers always pass <c>-n NETNS</c> or a netns subcommand.</summary>
    public static string Ip(params string[] args) => Run("ip", args);

    private static string Describe(string file, string[] args) => string.Join(' ', args.Prepend(file));
}
