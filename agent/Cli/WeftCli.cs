using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Invocation;
using System.CommandLine.Parsing;
using Weft.Capture;

namespace Weft.Cli;

/// <summary>
/// The <c>weft</c> command tree on System.CommandLine: every command answers --help/-h with usage,
/// options, defaults and examples; a parse error names the word and exits 2.
/// <code>
///   exit 0  done          exit 1  it failed (agent unreachable, kernel refused, a check failed)
///   exit 2  usage: unknown command or option, a missing or malformed value
/// </code>
/// </summary>
internal static partial class WeftCli
{
    public const int Ok = 0;
    public const int Failure = 1;
    public const int UsageError = 2;

    /// <summary>Help wraps here whatever the terminal, so the help text (and its golden files) is stable.</summary>
    private const int HelpWidth = 100;

    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<Command, string[]> ExamplesOf = [];

    /// <summary>The whole tree; built per call because System.CommandLine symbols belong to one parent.</summary>
    public static Command Build()
    {
        // A plain command, not RootCommand: that one takes its name from the executable (testhost, dotnet).
        var root = new Command("weft", "weft: a sidecarless service mesh node agent, and the CLI that reads it.")
        {
            new HelpOption(),
            new VersionOption(),
            AgentCommand.Create(),
            AgentCommand.CreateUninstall(),
            FlowsCommand.Create(),
        };
        foreach (var view in ViewsCommand.Views)
        {
            root.Add(ViewsCommand.Create(view));
        }

        root.Add(CaCommand.Create());
        if (BuildFeatures.Edge)
        {
            root.Add(GatewayCommand.Create());
        }

        root.Add(RoutesCommand.Create());
        root.Add(CheckCommand.Create());
        root.Add(VersionCommand.Create());
        root.Add(CompletionCommand.Create());
        Examples(root, "weft agent --inventory /etc/weft/inventory.yaml", "weft flows --verdict denied", "weft check", "weft agent --help");

        foreach (var option in root.Options)
        {
            if (option is HelpOption help && help.Action is HelpAction builtIn)
            {
                builtIn.MaxWidth = HelpWidth;
                help.Action = new HelpWithExamples(builtIn);
            }
            else if (option is VersionOption version)
            {
                version.Action = new VersionCommand.PrintVersion();
            }
        }

        return root;
    }

    /// <summary>Runs a command line as `weft` would: parse errors and <see cref="UsageException"/> exit 2.</summary>
    public static async Task<int> RunAsync(IReadOnlyList<string> args, TextWriter stdout, TextWriter stderr, CancellationToken cancellationToken = default)
    {
        var root = Build();
        var result = root.Parse(args);
        var configuration = new InvocationConfiguration
        {
            Output = stdout,
            Error = stderr,
            // Commands stop themselves on SIGINT/SIGTERM (the agent drains for --drain-seconds).
            ProcessTerminationTimeout = null,
            EnableDefaultExceptionHandler = false,
        };

        if (args.Count == 0)
        {
            await stderr.WriteLineAsync("weft: no command given").ConfigureAwait(false);
            configuration.Output = stderr;
            await root.Parse(["--help"]).InvokeAsync(configuration, cancellationToken).ConfigureAwait(false);
            return UsageError;
        }

        if (result.Errors.Count > 0 && result.Action is not (HelpWithExamples or VersionCommand.PrintVersion))
        {
            await stderr.WriteLineAsync(Describe(result)).ConfigureAwait(false);
            return UsageError;
        }

        try
        {
            return await result.InvokeAsync(configuration, cancellationToken).ConfigureAwait(false);
        }
        catch (UsageException e)
        {
            await stderr.WriteLineAsync($"{CommandPath(result.CommandResult.Command)}: {e.Message}\n{HelpHint(result.CommandResult.Command)}").ConfigureAwait(false);
            return UsageError;
        }
        catch (CaptureException e)
        {
            // The kernel said no: one line naming the cause and the fix, no stack trace.
            Log.Error("capture", e.Message);
            return Failure;
        }
        catch (Weft.Identity.IdentityException e)
        {
            Log.Error("identity", e.Message);
            return Failure;
        }
        catch (Weft.Inventory.InventoryLoadException e)
        {
            Log.Error("inventory", e.Message);
            return Failure;
        }
    }

    /// <summary>Attaches examples that --help prints after the options.</summary>
    public static void Examples(Command command, params string[] examples) => ExamplesOf.AddOrUpdate(command, examples);

    /// <summary>"weft flows", "weft ca init": how the user typed the command.</summary>
    public static string CommandPath(Command command)
    {
        var names = new List<string>();
        for (Symbol? s = command; s is Command c; s = c.Parents.FirstOrDefault())
        {
            names.Add(c.Name);
        }

        names.Reverse();
        return string.Join(' ', names);
    }

    private static string HelpHint(Command command) => $"Run '{CommandPath(command)} --help' for usage.";

    /// <summary>
    /// One line per problem, each naming the word at fault, with the nearest option or command when the
    /// word looks like a typo of one.
    /// </summary>
    internal static string Describe(ParseResult result)
    {
        var command = result.CommandResult.Command;
        var path = CommandPath(command);
        var lines = new List<string>();
        var unmatched = result.UnmatchedTokens.ToList();
        var afterUnknownOption = false;
        foreach (var token in result.Tokens)
        {
            var word = token.Value;
            if (token.Type != TokenType.Argument)
            {
                afterUnknownOption = false;
                continue;
            }

            // An unknown option may also have been taken as a command's positional argument.
            if (LooksLikeOption().IsMatch(word))
            {
                unmatched.Remove(word);
                var name = word.Split('=', 2)[0];
                var nearest = Nearest(name, OptionNames(command));
                lines.Add($"{path}: unknown option '{name}'" + (nearest is null ? "" : $"; did you mean {nearest}?"));
                afterUnknownOption = !word.Contains('=');
                continue;
            }

            if (!unmatched.Remove(word))
            {
                afterUnknownOption = false;
                continue;
            }

            if (afterUnknownOption)
            {
                // Most likely the unknown option's value: naming it too would only add noise.
                afterUnknownOption = false;
                continue;
            }

            if (command.Subcommands.Count > 0 && command.Arguments.Count == 0)
            {
                var nearest = Nearest(word, command.Subcommands.Where(c => !c.Hidden).Select(c => c.Name));
                lines.Add($"{path}: unknown command '{word}'" + (nearest is null ? "" : $"; did you mean {nearest}?"));
            }
            else
            {
                lines.Add($"{path}: unexpected argument '{word}'");
            }
        }

        // The library's own messages only when no word was unknown: an unknown word explains the rest
        // ("Required command was not provided" after a mistyped command, say).
        if (lines.Count == 0)
        {
            lines.AddRange(result.Errors.Select(e => $"{path}: {Plain(e.Message)}"));
        }

        lines.Add(HelpHint(command));
        return string.Join('\n', lines);
    }

    /// <summary>The library's messages in the words of a user who never saw a .NET type name, on one line.</summary>
    private static string Plain(string message)
    {
        var number = CannotParseNumber().Match(message);
        return number.Success
            ? $"{number.Groups["option"].Value} wants a whole number, got '{number.Groups["value"].Value}'"
            : message.Replace(":\n\t", ": ", StringComparison.Ordinal).Replace("\n\t", ", ", StringComparison.Ordinal);
    }

    [System.Text.RegularExpressions.GeneratedRegex("^Cannot parse argument '(?<value>.*)' for option '(?<option>[^']+)' as expected type '[^']*Int(32|64)[^']*'")]
    private static partial System.Text.RegularExpressions.Regex CannotParseNumber();

    [System.Text.RegularExpressions.GeneratedRegex("^--?[A-Za-z]")]
    private static partial System.Text.RegularExpressions.Regex LooksLikeOption();

    private static IEnumerable<string> OptionNames(Command command)
    {
        var recursive = command.Parents.OfType<Command>().SelectMany(c => c.Options).Where(o => o.Recursive);
        return command.Options.Concat(recursive).Where(o => !o.Hidden).SelectMany(o => o.Aliases.Prepend(o.Name)).Where(n => n.StartsWith("--", StringComparison.Ordinal));
    }

    /// <summary>The candidate a typo most likely meant: within a third of its length in edits, or one that starts with it.</summary>
    internal static string? Nearest(string word, IEnumerable<string> candidates)
    {
        string? best = null;
        var bestDistance = int.MaxValue;
        foreach (var candidate in candidates.Distinct(StringComparer.Ordinal))
        {
            var distance = EditDistance(word, candidate);
            if (candidate.StartsWith(word, StringComparison.Ordinal) && word.TrimStart('-').Length >= 2)
            {
                distance = Math.Min(distance, 1);
            }

            if (distance < bestDistance)
            {
                (best, bestDistance) = (candidate, distance);
            }
        }

        return best is not null && bestDistance <= Math.Max(1, word.TrimStart('-').Length / 3) ? best : null;
    }

    /// <summary>Insertions, deletions, substitutions and swaps of neighbours ("inti" is one edit from "init").</summary>
    private static int EditDistance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (var i = 0; i <= a.Length; i++)
        {
            d[i, 0] = i;
        }

        for (var j = 0; j <= b.Length; j++)
        {
            d[0, j] = j;
        }

        for (var i = 1; i <= a.Length; i++)
        {
            for (var j = 1; j <= b.Length; j++)
            {
                var cost = a[i - 1] == b[j - 1] ? 0 : 1;
                d[i, j] = Math.Min(d[i - 1, j - 1] + cost, Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1));
                if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                {
                    d[i, j] = Math.Min(d[i, j], d[i - 2, j - 2] + 1);
                }
            }
        }

        return d[a.Length, b.Length];
    }

    /// <summary>The library's help (usage, options with defaults), then the command's examples.</summary>
    internal sealed class HelpWithExamples(HelpAction builtIn) : SynchronousCommandLineAction
    {
        public override int Invoke(ParseResult parseResult)
        {
            builtIn.Invoke(parseResult);
            var output = parseResult.InvocationConfiguration.Output;
            if (ExamplesOf.TryGetValue(parseResult.CommandResult.Command, out var examples))
            {
                output.WriteLine("Examples:");
                foreach (var example in examples)
                {
                    output.WriteLine($"  {example}");
                }

                output.WriteLine();
            }

            return Ok;
        }
    }
}

internal sealed class UsageException(string message) : Exception(message);
