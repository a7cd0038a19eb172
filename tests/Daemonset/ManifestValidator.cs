using System.Diagnostics;
using System.Security.Cryptography;

namespace Weft.Tests.Daemonset;

/// <summary>
/// Runs tests/Daemonset/validate.mjs with Node.js. Its npm dependencies are installed with <c>npm ci</c> (from
/// package-lock.json) into tests/obj/daemonset-validate, not next to the script: the test project globs its own
/// folder, and a node_modules tree there would slow every build.
/// </summary>
internal static class ManifestValidator
{
    private static readonly SemaphoreSlim InstallGate = new(1, 1);
    private static string? _installed;

    public static string RepositoryRoot { get; } = FindRepositoryRoot();

    public static string DaemonsetDirectory => Path.Combine(RepositoryRoot, "daemonset");

    public static async Task<ProcessResult> ValidateAsync(string daemonsetDirectory)
    {
        var workDirectory = await EnsureInstalledAsync();
        return await RunAsync("node", [Path.Combine(workDirectory, "validate.mjs"), daemonsetDirectory], workDirectory, TimeSpan.FromMinutes(2));
    }

    private static async Task<string> EnsureInstalledAsync()
    {
        await InstallGate.WaitAsync();
        try
        {
            if (_installed is not null)
            {
                return _installed;
            }

            var source = Path.Combine(RepositoryRoot, "tests", "Daemonset");
            var work = Path.Combine(RepositoryRoot, "tests", "obj", "daemonset-validate");
            Directory.CreateDirectory(work);
            var lockFile = Path.Combine(source, "package-lock.json");
            var stamp = Path.Combine(work, "node_modules", ".weft-lock-sha256");
            var lockHash = Convert.ToHexString(SHA256.HashData(await File.ReadAllBytesAsync(lockFile)));
            foreach (var file in new[] { "package.json", "package-lock.json", "validate.mjs" })
            {
                File.Copy(Path.Combine(source, file), Path.Combine(work, file), overwrite: true);
            }

            if (!File.Exists(stamp) || await File.ReadAllTextAsync(stamp) != lockHash)
            {
                var npm = await RunAsync("npm", ["ci", "--no-audit", "--no-fund", "--loglevel=error"], work, TimeSpan.FromMinutes(8));
                Assert.True(npm.ExitCode == 0, $"npm ci failed in {work} (Node.js and npm come from tests/deps.sh):\n{npm.Output}");
                await File.WriteAllTextAsync(stamp, lockHash);
            }

            _installed = work;
            return work;
        }
        finally
        {
            InstallGate.Release();
        }
    }

    private static async Task<ProcessResult> RunAsync(string file, string[] args, string directory, TimeSpan timeout)
    {
        var info = new ProcessStartInfo(file)
        {
            WorkingDirectory = directory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        Process process;
        try
        {
            process = Process.Start(info)!;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"cannot run '{file}': {e.Message}; tests/deps.sh installs Node.js and npm", e);
        }

        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            using var cancel = new CancellationTokenSource(timeout);
            try
            {
                await process.WaitForExitAsync(cancel.Token);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                throw new TimeoutException($"'{file} {string.Join(' ', args)}' ran longer than {timeout}");
            }

            return new ProcessResult(process.ExitCode, await stdout, await stderr);
        }
    }

    private static string FindRepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Agent.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException($"no Agent.sln above {AppContext.BaseDirectory}");
    }
}

internal sealed record ProcessResult(int ExitCode, string StandardOutput, string StandardError)
{
    public string Output => StandardOutput + StandardError;
}
