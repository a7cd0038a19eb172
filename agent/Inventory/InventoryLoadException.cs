namespace Weft.Inventory;

/// <summary>
/// An inventory file that cannot be used as a whole. The message names the file and, when YAML can
/// tell, the line and column: "path:line:column: what is wrong".
/// </summary>
internal sealed class InventoryLoadException : Exception
{
    public InventoryLoadException(string path, int? line, int? column, string problem, Exception? inner = null)
        : base(Format(path, line, column, problem), inner)
    {
        Path = path;
        Line = line;
        Column = column;
        Problem = problem;
    }

    public string Path { get; }

    /// <summary>1-based line of the problem, when known.</summary>
    public int? Line { get; }

    /// <summary>1-based column of the problem, when known.</summary>
    public int? Column { get; }

    /// <summary>The message without the file position.</summary>
    public string Problem { get; }

    private static string Format(string path, int? line, int? column, string problem) =>
        line is { } l && column is { } c ? $"{path}:{l}:{c}: {problem}" : $"{path}: {problem}";
}

/// <summary>Why the last reload of an inventory file failed, for the admin endpoint and metrics.</summary>
internal sealed record InventoryLoadError(string Message, DateTimeOffset At, string Path, int? Line, int? Column);
