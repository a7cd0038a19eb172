using System.CommandLine;
using System.Diagnostics;
using Weft.Cli;

namespace Weft.Tests.Cli;

/// <summary>
/// What a user sees of the command line itself: --help for every command (golden files in
/// tests/Cli/golden/help; after a deliberate change run once with WEFT_UPDATE_GOLDEN=1 and review the
/// diff), named errors with exit 2, `weft version`, and completion scripts that a real bash runs.
/// </summary>
public class CliUsageTests
{
    private static string HelpGolden(string name, [System.Runtime.CompilerServices.CallerFilePath] string here = "") =>
        Path.Combine(Path.GetDirectoryName(here)!, "golden", "help", name);

    /// <summary>Every command path of the tree: "", "agent", "ca", "ca init", ...</summary>
    private static List<string> CommandPaths()
    {
        var paths = new List<string>();
        Visit(WeftCli.Build(), "");
        return paths;

        void Visit(Command command, string path)
        {
            paths.Add(path);
            foreach (var sub in command.Subcommands)
            {
                Visit(sub, path.Length == 0 ? sub.Name : $"{path} {sub.Name}");
            }
        }
    }

    public static TheoryData<string> Commands() => new(CommandPaths());

    private static async Task<(int Exit, string Out, string Err)> RunAsync(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var exit = await WeftCli.RunAsync(args, stdout, stderr);
        return (exit, stdout.ToString(), stderr.ToString());
    }

    private static string[] Words(string path) => path.Split(' ', StringSplitOptions.RemoveEmptyEntries);

    [Theory]
    [MemberData(nameof(Commands))]
    public async Task Help_OfEveryCommand_MatchesGolden_WithUsageOptionsAndExamples(string path)
    {
        var (exit, output, error) = await RunAsync([.. Words(path), "--help"]);

        Assert.Equal(0, exit);
        Assert.Equal("", error);
        Assert.Contains($"Usage:\n  weft {path}".TrimEnd(), output);
        Assert.Contains("Examples:\n  weft", output);
        var file = HelpGolden((path.Length == 0 ? "weft" : path.Replace(' ', '-')) + ".txt");
        if (Environment.GetEnvironmentVariable("WEFT_UPDATE_GOLDEN") == "1")
        {
            Directory.CreateDirectory(Path.GetDirectoryName(file)!);
            File.WriteAllText(file, output);
        }

        Assert.Equal(File.ReadAllText(file), output);
        var (shortExit, shortOutput, _) = await RunAsync([.. Words(path), "-h"]);
        Assert.Equal(0, shortExit);
        Assert.Equal(output, shortOutput);
    }

    [Fact]
    public void HelpGoldens_AreExactlyTheCommands_NoneLeftOverFromARemovedOne()
    {
        var expected = CommandPaths().Select(p => (p.Length == 0 ? "weft" : p.Replace(' ', '-')) + ".txt").Order(StringComparer.Ordinal);
        var present = Directory.GetFiles(Path.GetDirectoryName(HelpGolden("x"))!).Select(f => Path.GetFileName(f)).Order(StringComparer.Ordinal);

        Assert.Equal(expected, present);
    }

    [Fact]
    public async Task Help_ShowsDefaults_WhereAnOptionHasOne()
    {
        var (_, output, _) = await RunAsync("agent", "--help");

        Assert.Matches(@"--bpffs <DIR>\s+Where maps and links are pinned \(on bpffs\)\.\s+\[default:\s+/sys/fs/bpf/weft\]", output);
        Assert.Matches(@"--drain-seconds <N>\s+On SIGTERM, how long open connections may finish\.\s+\[default: 20\]", output);
        Assert.Matches(@"--access-log <json\|text\|off>\s+A line per finished connection on stdout\.\s+\[default: json\]", output);
        Assert.Matches(@"--tunnel-idle-seconds <N>\s+A pooled HBONE tunnel that carried no stream for this\s+long closes\.\s+\[default: 300\]", output);
    }

    [Theory]
    [MemberData(nameof(Commands))]
    public async Task UnknownOption_OnEveryCommand_IsNamed_AndExits2(string path)
    {
        var (exit, output, error) = await RunAsync([.. Words(path), "--bogus", "1"]);

        Assert.Equal(2, exit);
        Assert.Equal("", output);
        Assert.StartsWith($"weft {path}: unknown option '--bogus'".Replace("  ", " ", StringComparison.Ordinal).Replace("weft :", "weft:", StringComparison.Ordinal), error);
        Assert.Contains("--help' for usage.", error);
    }

    [Fact]
    public async Task Agent_WithAnUnknownOption_NamesIt_NotTheMissingInventory()
    {
        var (exit, _, error) = await RunAsync("agent", "--bogus");

        Assert.Equal(2, exit);
        Assert.Equal("weft agent: unknown option '--bogus'\nRun 'weft agent --help' for usage.\n", error);
    }

    [Theory]
    [InlineData(new[] { "flows", "--namspace", "demo" }, "weft flows: unknown option '--namspace'; did you mean --namespace?")]
    [InlineData(new[] { "agent", "--inventroy", "x.yaml" }, "weft agent: unknown option '--inventroy'; did you mean --inventory?")]
    [InlineData(new[] { "agent", "--drain-second=5" }, "weft agent: unknown option '--drain-second'; did you mean --drain-seconds?")]
    [InlineData(new[] { "flws" }, "weft: unknown command 'flws'; did you mean flows?")]
    [InlineData(new[] { "ca", "inti" }, "weft ca: unknown command 'inti'; did you mean init?")]
    public async Task Typo_IsNamed_WithTheNearestSuggestion_AndExits2(string[] args, string firstLine)
    {
        var (exit, _, error) = await RunAsync(args);

        Assert.Equal(2, exit);
        Assert.Equal(firstLine, error.Split('\n')[0]);
    }

    [Theory]
    [InlineData(new[] { "flows", "-o", "yaml" }, "'yaml'", "table")]
    [InlineData(new[] { "flows", "--last", "x" }, "--last wants a whole number, got 'x'", null)]
    [InlineData(new[] { "agent", "--access-log", "xml" }, "'xml'", "json")]
    [InlineData(new[] { "ca", "init" }, "--dir", null)]
    [InlineData(new[] { "completion", "fish" }, "'fish'", "bash")]
    [InlineData(new[] { "agent", "--inventory", "x.yaml", "--max-inbound-per-node", "-1" }, "--max-inbound-per-node wants 0 (derive it) or more, got -1", null)]
    [InlineData(new[] { "gateway", "--inventory", "x.yaml", "--ca-key", "k.pem" }, "--ca-key needs --ca-cert", null)]
    [InlineData(new[] { "gateway", "--inventory", "x.yaml", "--ca-cert", "c.pem", "--max-tunnels", "0" }, "--max-tunnels must be at least 1", null)]
    [InlineData(new[] { "gateway", "--inventory", "x.yaml", "--gateway-http", "web=127.0.0.1:9001" }, "--gateway-http wants NAMESPACE/NAME=ADDRESS:PORT, got 'web=127.0.0.1:9001'", null)]
    [InlineData(new[] { "gateway", "--inventory", "x.yaml", "--gateway-https", "demo/web=off" }, "--gateway-https wants NAMESPACE/NAME=ADDRESS:PORT, got 'demo/web=off'", null)]
    [InlineData(new[] { "gateway", "--inventory", "x.yaml", "--gateway-http", "demo/a=127.0.0.1:9001", "--gateway-https", "demo/b=127.0.0.1:9001" }, "--gateway-https demo/b 127.0.0.1:9001 overlaps --gateway-http demo/a 127.0.0.1:9001", null)]
    [InlineData(new[] { "gateway", "--inventory", "x.yaml", "--gateway-http", "demo/a=127.0.0.1:8080" }, "--gateway-http demo/a 127.0.0.1:8080 overlaps --http 0.0.0.0:8080", null)]
    [InlineData(new[] { "gateway", "--inventory", "x.yaml", "--https", "127.0.0.1:9443", "--gateway-https", "demo/a=127.0.0.1:9443" }, "--gateway-https demo/a 127.0.0.1:9443 overlaps --https 127.0.0.1:9443", null)]
    [InlineData(new[] { "gateway", "--gateway-http", "demo/a=0.0.0.0:9001", "--gateway-status-address", "demo/b=192.0.2.1" }, "--gateway-status-address names Gateway demo/b, which has no address of its own", null)]
    [InlineData(new[] { "gateway", "--inventory", "x.yaml", "--gateway-http", "demo/a=127.0.0.1:9001", "--gateway-publish-service", "demo/a=weft-system/a" }, "--inventory is the standalone mode", null)]
    public async Task BadValue_IsNamed_AndExits2(string[] args, string named, string? offered)
    {
        var (exit, _, error) = await RunAsync(args);

        Assert.Equal(2, exit);
        Assert.Contains(named, error.Split('\n')[0]);
        if (offered is not null)
        {
            Assert.Contains(offered, error.Split('\n')[0]);
        }
    }

    [Fact]
    public async Task NoCommand_PrintsTheCommandsOnStderr_AndExits2()
    {
        var (exit, output, error) = await RunAsync();

        Assert.Equal(2, exit);
        Assert.Equal("", output);
        Assert.StartsWith("weft: no command given\n", error);
        Assert.Contains("  flows ", error);
    }

    [Fact]
    public async Task Version_PrintsVersionCommitAndMapLayout_SameAsDashDashVersion()
    {
        var (exit, output, _) = await RunAsync("version");

        Assert.Equal(0, exit);
        Assert.Matches($"^weft \\d+\\.\\d+\\.\\d+\ncommit: ([0-9a-f]{{40}}|unknown)\nbpf map layout: {Weft.Capture.MapLayout.LayoutVersion}\n$", output);
        var (flagExit, flagOutput, _) = await RunAsync("--version");
        Assert.Equal(0, flagExit);
        Assert.Equal(output, flagOutput);
    }

    [Fact]
    public async Task Version_NamesACommitOfThisRepository()
    {
        var (_, output, _) = await RunAsync("version");

        // Built from this checkout, the build embeds a commit git knows here (HEAD at build time, which
        // a later commit without a rebuild moves on from: hence no comparison with HEAD).
        var commit = System.Text.RegularExpressions.Regex.Match(output, "^commit: ([0-9a-f]{40})$", System.Text.RegularExpressions.RegexOptions.Multiline);
        Assert.True(commit.Success, output);
        Assert.Equal("commit", Git("cat-file", "-t", commit.Groups[1].Value));
    }

    private static string Git(params string[] args)
    {
        var info = new ProcessStartInfo("git") { RedirectStandardOutput = true, WorkingDirectory = AppContext.BaseDirectory };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        using var git = Process.Start(info)!;
        var text = git.StandardOutput.ReadToEnd().Trim();
        git.WaitForExit();
        return text;
    }

    [Fact]
    public async Task CompletionScripts_HoldEveryCommandOptionAndFiniteValue()
    {
        foreach (var shell in new[] { "bash", "zsh" })
        {
            var (exit, script, _) = await RunAsync("completion", shell);

            Assert.Equal(0, exit);
            foreach (var command in new[] { "agent", "uninstall", "flows", "workloads", "services", "policies", "certs", "ca", "gateway", "check", "version", "completion" })
            {
                Assert.Contains($"\"weft {command}\"", script);
            }

            Assert.Contains("\"weft ca init\"", script);
            Assert.Contains("--output|-o) ", script);
            Assert.Contains("json table", script);
            Assert.Contains("CONNECT DC denied DENY error forwarded IDLE_TIMEOUT LOOP NO_CERTIFICATE TLS_FAILURE UC UF UH UO", script);
            Assert.Contains("json off text", script);
            Assert.Contains("--max-inbound-per-identity", script);
        }
    }

    /// <summary>Runs the bash script in a real bash as the shell would on Tab, and returns what it offers.</summary>
    private static async Task<string[]> BashCompleteAsync(string line)
    {
        var (_, script, _) = await RunAsync("completion", "bash");
        var file = Path.Combine(Path.GetTempPath(), $"weft-completion-{Guid.NewGuid():N}.bash");
        File.WriteAllText(file, script);
        try
        {
            var info = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true };
            info.ArgumentList.Add("-c");
            info.ArgumentList.Add("""source "$1"; read -ra COMP_WORDS <<< "$2"; [[ "$2" == *" " ]] && COMP_WORDS+=(""); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _weft; printf '%s\n' "${COMPREPLY[@]}" """);
            info.ArgumentList.Add("bash");
            info.ArgumentList.Add(file);
            info.ArgumentList.Add(line);
            using var bash = Process.Start(info)!;
            var output = await bash.StandardOutput.ReadToEndAsync();
            var error = await bash.StandardError.ReadToEndAsync();
            await bash.WaitForExitAsync();
            Assert.True(bash.ExitCode == 0, error);
            Assert.Equal("", error);
            return output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Theory]
    [InlineData("weft fl", new[] { "flows" })]
    [InlineData("weft flows -o ", new[] { "table", "json" })]
    [InlineData("weft flows --verdict d", new[] { "denied" })]
    [InlineData("weft flows --fol", new[] { "--follow" })]
    [InlineData("weft ca ", new[] { "init", "issue-node", "serve", "--help", "-h" })]
    [InlineData("weft ca init --", new[] { "--dir", "--trust-domain", "--days", "--help" })]
    [InlineData("weft agent --access-log ", new[] { "json", "text", "off" })]
    [InlineData("weft completion ", new[] { "bash", "zsh", "--help", "-h" })]
    public async Task BashCompletion_OffersWhatTheCommandTakesAtThatPoint(string line, string[] offered)
    {
        var words = await BashCompleteAsync(line);

        Assert.Equal(offered.Order(StringComparer.Ordinal), words.Order(StringComparer.Ordinal));
    }
}
