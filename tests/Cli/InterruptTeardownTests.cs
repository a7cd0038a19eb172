using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using Weft.Harness;
using Weft.Tests.EndToEnd;

namespace Weft.Tests.Cli;

/// <summary>
/// `weft demo --keep` and `weft bench` stopped the way a user stops them: Ctrl-C at a terminal (SIGINT
/// to the whole foreground process group, children included) or SIGTERM to the command. Whatever the
/// moment, nothing carrying the run's id may stay under the bpffs root, the cgroup root or `ip netns`.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public sealed partial class InterruptTeardownTests
{
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromMinutes(3);
    private static readonly TimeSpan ExitTimeout = TimeSpan.FromSeconds(90);

    [PrivilegedTheory]
    [InlineData(0)]
    [InlineData(1500)]
    public async Task DemoKeep_CtrlCToItsProcessGroup_RemovesEverythingOfTheRunAndSaysSo(int delayMs)
    {
        await using var demo = Command.Start("demo", "--keep");
        await demo.WaitForAsync("the cluster stays up until Ctrl-C", ReadyTimeout);
        await Task.Delay(delayMs);

        demo.SignalProcessGroup(Tmds.Linux.LibC.SIGINT);
        var exit = await demo.WaitForExitAsync(ExitTimeout);

        var runId = demo.RunIds().Single();
        Assert.True(exit == 0, $"exit code {exit}\n{demo.Output}");
        AssertSaysRemoved(runId, demo.Output);
        AssertNothingLeft(runId, demo.Output);
    }

    [PrivilegedFact]
    public async Task DemoKeep_CtrlCTypedAtAPseudoTerminal_RemovesEverythingOfTheRunAndSaysSo()
    {
        // script(1) runs the demo on a pseudo-terminal; ^C written to it is Ctrl-C typed by a user
        await using var demo = Command.Start(pseudoTerminal: true, "demo", "--keep");
        await demo.WaitForAsync("the cluster stays up until Ctrl-C", ReadyTimeout);
        await Task.Delay(400);

        demo.Type("\u0003");
        var exit = await demo.WaitForExitAsync(ExitTimeout);

        var runId = demo.RunIds().Single();
        Assert.True(exit == 0, $"exit code {exit}\n{demo.Output}");
        Assert.Contains("interrupted; all traffic arrived intact", demo.Output);
        AssertSaysRemoved(runId, demo.Output);
        AssertNothingLeft(runId, demo.Output);
    }

    [PrivilegedFact]
    public async Task DemoKeep_Sigterm_RemovesEverythingOfTheRunAndSaysSo()
    {
        await using var demo = Command.Start("demo", "--keep");
        await demo.WaitForAsync("the cluster stays up until Ctrl-C", ReadyTimeout);

        demo.Signal(Tmds.Linux.LibC.SIGTERM);
        var exit = await demo.WaitForExitAsync(ExitTimeout);

        var runId = demo.RunIds().Single();
        Assert.True(exit == 0, $"exit code {exit}\n{demo.Output}");
        AssertSaysRemoved(runId, demo.Output);
        AssertNothingLeft(runId, demo.Output);
    }

    [PrivilegedFact]
    public async Task Demo_CtrlCWhileTheAgentsStart_RemovesWhatWasMadeSoFar()
    {
        await using var demo = Command.Start("demo", "--keep");

        // the cluster's namespaces are built; its agents are loading their eBPF programs
        await demo.WaitForAsync("harness: cluster ", ReadyTimeout);
        await Task.Delay(300);
        demo.SignalProcessGroup(Tmds.Linux.LibC.SIGINT);
        var exit = await demo.WaitForExitAsync(ExitTimeout);

        var runId = demo.RunIds().Single();
        Assert.True(exit is 130 or 0, $"exit code {exit}\n{demo.Output}");
        Assert.Contains($"cluster {runId} removed:", demo.Output);
        AssertNothingLeft(runId, demo.Output);
    }

    [PrivilegedFact]
    public async Task Bench_CtrlCWhileItsSecondClusterStarts_RemovesBothClusters()
    {
        // the metrics suite builds two clusters, so the interrupt lands while the second one is being made
        await using var bench = Command.Start("bench", "--suite", "metrics", "--only", "latency", "--seconds", "1", "--repeat", "1");
        await bench.WaitForAsync("building a second 2-node cluster", ReadyTimeout);
        await Task.Delay(500);

        bench.SignalProcessGroup(Tmds.Linux.LibC.SIGINT);
        var exit = await bench.WaitForExitAsync(ExitTimeout);

        var runIds = bench.RunIds();
        Assert.True(runIds.Count == 2, $"run ids {string.Join(' ', runIds)}\n{bench.Output}");
        Assert.True(exit == 130, $"exit code {exit}\n{bench.Output}");
        Assert.Contains("interrupted", bench.Output);
        foreach (var runId in runIds)
        {
            Assert.Contains($"cluster {runId} removed:", bench.Output);
            AssertNothingLeft(runId, bench.Output);
        }
    }

    private static void AssertSaysRemoved(string runId, string output)
    {
        var said = output.Split('\n').LastOrDefault(l => l.Contains($"== cluster {runId} removed: ", StringComparison.Ordinal));
        Assert.True(said != null, $"no '== cluster {runId} removed: ...' line:\n{output}");
        foreach (var node in new[] { "node1", "node2" })
        {
            Assert.Contains($"eBPF programs, links and pins under /sys/fs/bpf/weft-{runId}-{node}", said);
        }

        Assert.Contains($"network namespaces weft{runId}-*", said);
        Assert.Contains($"cgroup tree {Path.Join(Cgroup2.FindMount(), "weft-" + runId)}", said);
    }

    private static void AssertNothingLeft(string runId, string output)
    {
        var pins = Directory.EnumerateFileSystemEntries("/sys/fs/bpf").Where(p => Path.GetFileName(p).Contains(runId, StringComparison.Ordinal));
        var cgroups = Directory.EnumerateFileSystemEntries(Cgroup2.FindMount()).Where(p => Path.GetFileName(p).Contains(runId, StringComparison.Ordinal));
        var netns = Run("ip", "netns", "list").Split('\n').Where(l => l.Contains(runId, StringComparison.Ordinal));
        var left = pins.Concat(cgroups).Concat(netns).ToList();
        Assert.True(left.Count == 0, $"run {runId} left: {string.Join(", ", left)}\n{output}");
        Assert.False(Directory.Exists(Path.Join("/run/weft-harness", runId)), $"run record of {runId} left\n{output}");
    }

    private static string Run(string file, params string[] args)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info)!;
        var text = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return text;
    }

    [GeneratedRegex(@"cluster ([0-9a-f]{6})\b")]
    private static partial Regex ClusterId();

    /// <summary>
    /// `weft ...` in a new session and process group of its own (setsid, then exec: the pid is the group
    /// id), as a shell with job control starts a foreground command; output of both streams in arrival order.
    /// </summary>
    private sealed class Command : IAsyncDisposable
    {
        private readonly Process _process;
        private readonly StringBuilder _output = new();

        private Command(Process process)
        {
            _process = process;
        }

        public string Output
        {
            get
            {
                lock (_output)
                {
                    return _output.ToString();
                }
            }
        }

        public static Command Start(params string[] args) => Start(pseudoTerminal: false, args);

        public static Command Start(bool pseudoTerminal, params string[] args)
        {
            var (file, arguments) = WeftExecutable.Command(args);
            // what a job-control shell does for a foreground command: default dispositions (a test runner
            // started in the background may ignore SIGINT, and ignored signals are inherited), own group
            var info = new ProcessStartInfo("/usr/bin/python3")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                RedirectStandardInput = true,
                UseShellExecute = false,
            };
            info.ArgumentList.Add("-c");
            info.ArgumentList.Add("import os, signal, sys\n" +
                "for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE): signal.signal(s, signal.SIG_DFL)\n" +
                (pseudoTerminal ? "" : "os.setsid()\n") + "os.execvp(sys.argv[1], sys.argv[1:])");
            if (pseudoTerminal)
            {
                // script gives the command a session of its own with the pseudo-terminal as its controlling terminal.
                // It runs the command through `$SHELL -c`: exec, so that the foreground job is weft alone, as at a
                // user's prompt (dash, which CI's /bin/sh is, would otherwise wait, take the SIGINT and exit 130).
                info.ArgumentList.Add("script");
                info.ArgumentList.Add("-qfec");
                info.ArgumentList.Add("exec " + string.Join(' ', arguments.Prepend(file).Select(a => "'" + a.Replace("'", "'\\''", StringComparison.Ordinal) + "'")));
                info.ArgumentList.Add("/dev/null");
            }
            else
            {
                info.ArgumentList.Add(file);
                foreach (var arg in arguments)
                {
                    info.ArgumentList.Add(arg);
                }
            }

            var process = new Process { StartInfo = info };
            var command = new Command(process);
            process.OutputDataReceived += (_, e) => command.Append(e.Data);
            process.ErrorDataReceived += (_, e) => command.Append(e.Data);
            process.Start();
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            return command;
        }

        public async Task WaitForAsync(string text, TimeSpan timeout)
        {
            var deadline = DateTime.UtcNow + timeout;
            while (!Output.Contains(text, StringComparison.Ordinal))
            {
                if (_process.HasExited)
                {
                    Assert.Fail($"exited ({_process.ExitCode}) before printing '{text}':\n{Output}");
                }

                Assert.True(DateTime.UtcNow < deadline, $"'{text}' not printed within {timeout}:\n{Output}");
                await Task.Delay(50);
            }
        }

        /// <summary>What a terminal does on Ctrl-C: the signal to every process of the foreground group.</summary>
        public void SignalProcessGroup(int signal) => Assert.Equal(0, Tmds.Linux.LibC.kill(-_process.Id, signal));

        /// <summary>Keys typed at the pseudo-terminal.</summary>
        public void Type(string keys)
        {
            _process.StandardInput.Write(keys);
            _process.StandardInput.Flush();
        }

        public void Signal(int signal) => Assert.Equal(0, Tmds.Linux.LibC.kill(_process.Id, signal));

        public async Task<int> WaitForExitAsync(TimeSpan timeout)
        {
            using var cts = new CancellationTokenSource(timeout);
            try
            {
                await _process.WaitForExitAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                Assert.Fail($"still running {timeout} after the signal:\n{Output}");
            }

            return _process.ExitCode;
        }

        public IReadOnlyList<string> RunIds() =>
            ClusterId().Matches(Output).Select(m => m.Groups[1].Value).Distinct().ToList();

        public async ValueTask DisposeAsync()
        {
            if (!_process.HasExited)
            {
                // a failed test must not leave the command running: SIGTERM (it cleans up), then SIGKILL
                _ = Tmds.Linux.LibC.kill(_process.Id, Tmds.Linux.LibC.SIGTERM);
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
                try
                {
                    await _process.WaitForExitAsync(cts.Token);
                }
                catch (OperationCanceledException)
                {
                    _process.Kill();
                }
            }

            _process.Dispose();
        }

        private void Append(string? line)
        {
            if (line != null)
            {
                lock (_output)
                {
                    _output.AppendLine(line);
                }
            }
        }
    }
}
